"""Stage index: trained network + a photo collection -> search index (data/index).

The default collection, the ingested photos, is indexed from the stored features (seconds); a
``search.images`` folder goes through the trunk, reusing the rows of unchanged photos.
"""

import sys
import time

from fashiondvc.errors import run_main
from fashiondvc.index import build_index, build_index_from_features
from fashiondvc.io import repo_path
from fashiondvc.params import load_params


def main() -> None:
    model_path, ingested, split_csv, features_dir, out_dir = sys.argv[1:6]
    params = load_params()
    images, threshold = params["search"]["images"], params["evaluate"]["threshold"]
    precision = params["featurize"]["precision"]
    start = time.perf_counter()
    if images is None:
        index = build_index_from_features(model_path, ingested, split_csv, features_dir,
                                          out_dir, threshold=threshold, precision=precision)
        counts = {"computed": 0, "reused": len(index), "skipped": 0}
        images = f"{ingested}/images (stored features)"
    else:
        index, counts = build_index(model_path, repo_path(images), out_dir,
                                    threshold=threshold, precision=precision)
    print(f"index: {len(index)} photos of {images} in {time.perf_counter() - start:.1f}s "
          f"({counts['computed']} featurized, {counts['reused']} reused, "
          f"{counts['skipped']} skipped)")


if __name__ == "__main__":
    run_main(main)
