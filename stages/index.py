"""Stage index: trained network + a photo collection -> search index (data/index).

The default collection, the ingested photos, is indexed from the stored features (seconds); a
``search.images`` folder goes through the feature extractor, reusing the rows of unchanged photos.
"""

import sys
import time

from fashiondvc.errors import run_main
from fashiondvc.index import index_collection
from fashiondvc.params import load_params


def main() -> None:
    model_path, ingested, split_csv, features_dir, out_dir = sys.argv[1:6]
    params = load_params()
    start = time.perf_counter()
    index, counts = index_collection(params, model_path, ingested, split_csv, features_dir,
                                     out_dir)
    source = params.search.images or f"{ingested}/images (stored features)"
    print(f"index: {len(index)} photos of {source} in {time.perf_counter() - start:.1f}s "
          f"({counts['computed']} featurized, {counts['reused']} reused, "
          f"{counts['skipped']} skipped)")


if __name__ == "__main__":
    run_main(main)
