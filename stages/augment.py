"""Stage augment: ingested photos -> sharded store of originals plus augmented copies."""

import sys

from fashiondvc.augment import augment_ingested
from fashiondvc.errors import run_main
from fashiondvc.params import load_params


def main() -> None:
    ingested, out_dir = sys.argv[1:3]
    params = load_params().augment
    index = augment_ingested(ingested, out_dir, params)
    print(f"augment: {index['image_id'].nunique()} photos -> {len(index)} images "
          f"of {params.image_size}x{params.image_size}")


if __name__ == "__main__":
    run_main(main)
