"""Stage split: the augmented index -> split.csv (index, image_id, copy, subset)."""

import sys

import pandas as pd

from fashiondvc.errors import run_main
from fashiondvc.io import write_csv
from fashiondvc.params import load_params
from fashiondvc.split import split_test_mask


def main() -> None:
    index_csv, out_csv = sys.argv[1], sys.argv[2]
    params = load_params()["split"]
    index = pd.read_csv(index_csv)
    is_test = split_test_mask(index["image_id"].to_numpy(), params["test_size"],
                              group_by_source=params["group_by_source"], seed=params["seed"])
    table = index[["index", "image_id", "copy"]].assign(
        subset=pd.Series(is_test).map({True: "test", False: "train"}))
    write_csv(out_csv, table)
    print(f"split: {int((~is_test).sum())} train, {int(is_test.sum())} test images "
          f"({'grouped by photo' if params['group_by_source'] else 'per image'})")


if __name__ == "__main__":
    run_main(main)
