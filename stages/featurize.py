"""Stage featurize: every augmented image -> the feature extractor's outputs (data/features)."""

import sys
import time

from fashiondvc.config import ExtractorConfig
from fashiondvc.errors import run_main
from fashiondvc.features import FeatureExtractor, featurize
from fashiondvc.params import load_params
from fashiondvc.store import ImageStore


def main() -> None:
    params = load_params()
    options = params.featurize
    start = time.perf_counter()
    extractor = FeatureExtractor(ExtractorConfig.from_params(params), device=options.device)
    meta = featurize(ImageStore(sys.argv[1]), extractor, sys.argv[2],
                     batch_size=options.batch_size, workers=options.workers,
                     mirror=options.mirror)
    seconds = time.perf_counter() - start
    shapes = ", ".join(f"{k} {tuple(v['shape'])}" for k, v in meta["features"].items())
    print(f"featurize: {meta['n_images']} images -> {shapes} in {seconds:.1f}s "
          f"({meta['n_images'] / seconds:.1f} images/s)")


if __name__ == "__main__":
    run_main(main)
