"""Stage featurize: every augmented image -> the frozen VGG-16 trunk's output (data/features)."""

import sys
import time
from pathlib import Path

from fashiondvc.errors import run_main
from fashiondvc.features import featurize
from fashiondvc.io import atomic_path, write_json
from fashiondvc.params import load_params
from fashiondvc.store import ImageStore
from fashiondvc.trunk import feature_shape, load_vgg16, split_vgg


def main() -> None:
    store_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    params = load_params()
    model, options = params["model"], params["featurize"]
    store = ImageStore(store_dir)
    shape = feature_shape(model["frozen_convs"], params["augment"]["image_size"])
    frozen, _ = split_vgg(load_vgg16(model["weights"]), model["frozen_convs"])
    start = time.perf_counter()
    with atomic_path(out_dir, is_dir=True) as tmp:  # all files, or nothing
        featurize(store, frozen, tmp, feature_shape=shape, batch_size=options["batch_size"],
                  workers=options["workers"], precision=options["precision"],
                  device=options["device"])
        write_json(tmp / "meta.json", {"n_images": len(store), "shape": list(shape),
                                       "frozen_convs": model["frozen_convs"],
                                       "weights": model["weights"],
                                       "precision": options["precision"]})
    seconds = time.perf_counter() - start
    print(f"featurize: {len(store)} images -> {shape} in {seconds:.1f}s "
          f"({len(store) / seconds:.1f} images/s)")


if __name__ == "__main__":
    run_main(main)
