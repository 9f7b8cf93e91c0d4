"""Stage split: the augmented index -> split.csv (index, image_id, copy, subset)."""

import sys

import pandas as pd

from fashiondvc.errors import run_main
from fashiondvc.io import write_csv
from fashiondvc.params import load_params
from fashiondvc.split import assign_subsets


def main() -> None:
    index_csv, out_csv = sys.argv[1], sys.argv[2]
    params = load_params()["split"]
    index = pd.read_csv(index_csv)
    subsets = assign_subsets(index["image_id"].to_numpy(), params["test_size"],
                             val_size=params["val_size"],
                             group_by_source=params["group_by_source"], seed=params["seed"])
    write_csv(out_csv, index[["index", "image_id", "copy"]].assign(subset=subsets))
    counts = pd.Series(subsets).value_counts()
    print(f"split: {counts.get('train', 0)} train, {counts.get('val', 0)} val, "
          f"{counts.get('test', 0)} test images "
          f"({'grouped by photo' if params['group_by_source'] else 'per image'})")


if __name__ == "__main__":
    run_main(main)
