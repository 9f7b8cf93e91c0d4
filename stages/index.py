"""Stage index: trained network + a photo collection -> search index (data/index)."""

import sys
import time

from fashiondvc.errors import FashionError, run_main
from fashiondvc.params import load_params
from fashiondvc.search import build_index


def main() -> None:
    model_path, ingested, out_dir = sys.argv[1:4]
    params = load_params()
    search = params.get("search") or {}
    images = search.get("images") or f"{ingested}/images"
    if not isinstance(images, str):
        raise FashionError(f"search.images: expected a folder path or null, got {images!r}")
    start = time.perf_counter()
    index, counts = build_index(model_path, images, out_dir,
                                threshold=params["evaluate"]["threshold"],
                                precision=params["featurize"]["precision"])
    print(f"index: {len(index)} photos of {images} in {time.perf_counter() - start:.1f}s "
          f"({counts['computed']} featurized, {counts['reused']} reused, "
          f"{counts['skipped']} skipped)")


if __name__ == "__main__":
    run_main(main)
