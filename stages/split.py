"""Stage split: the augmented index -> split.csv (index, image_id, copy, subset)."""

import sys

from fashiondvc.errors import run_main
from fashiondvc.params import load_params
from fashiondvc.split import split_index


def main() -> None:
    params = load_params().split
    counts = split_index(sys.argv[1], sys.argv[2], params)
    print(f"split: {counts['train']} train, {counts['val']} val, {counts['test']} test images "
          f"({'grouped by photo' if params.group_by_source else 'per image'})")


if __name__ == "__main__":
    run_main(main)
