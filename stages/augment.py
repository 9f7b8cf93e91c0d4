"""Stage augment: ingested photos -> sharded store of originals plus augmented copies."""

import sys

from fashiondvc.augment import augment_folder
from fashiondvc.dataset import read_ingested
from fashiondvc.errors import run_main
from fashiondvc.params import load_params


def main() -> None:
    ingested, out_dir = sys.argv[1], sys.argv[2]
    params = load_params()["augment"]
    labels = read_ingested(ingested)
    index = augment_folder(f"{ingested}/images", labels["image_id"], out_dir,
                           copies=params["copies"], size=params["image_size"],
                           seed=params["seed"], workers=params["workers"])
    print(f"augment: {len(labels)} photos -> {len(index)} images "
          f"of {params['image_size']}x{params['image_size']}")


if __name__ == "__main__":
    run_main(main)
