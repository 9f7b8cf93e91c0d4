"""Do the neighbours of a striped photo wear stripes, and those of a red one red?

For every *test* photo whose true labels include an attribute, the share of its 10 nearest
*training* photos in a search index (the index's own ranking: `fashiondvc.search.rank`) that
truly have it, against the share of training photos that have it (what random neighbours give).
Run from the repository root, after indexing the ingested photos with a model::

    python reports/recipes/neighbours.py data/index-champion data/split.csv \
        pattern_stripe red > reports/recipes/neighbours.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fashiondvc.index import SearchIndex
from fashiondvc.labels import binary_targets
from fashiondvc.search import rank


def main() -> None:
    index_dir, split_csv, *attributes = sys.argv[1:]
    index = SearchIndex.load(index_dir)
    split = pd.read_csv(split_csv)
    originals = split[split["copy"] == 0].set_index("image_id")["subset"]
    ids = [int(Path(p).stem) for p in index.paths]
    subset = np.array([originals.get(i, "") for i in ids])
    labels = pd.read_csv("data/ingested/labels.csv").set_index("image_id").loc[ids]
    truth, observed = binary_targets(labels.reset_index(), attributes)
    train = np.flatnonzero(subset == "train")
    not_train = [int(r) for r in np.flatnonzero(subset != "train")]
    print(f"index {index_dir} ({index.embedding} embedding, TTA {index.tta}); queries: test "
          f"photos with the attribute; neighbours: the 10 nearest of {len(train)} training "
          "photos\n")
    print("| attribute | queries | neighbours that have it | training photos that have it | "
          "queries with none |")
    print("|---|---|---|---|---|")
    for j, name in enumerate(attributes):
        has = (truth[:, j] > 0.5) & observed[:, j]
        queries = np.flatnonzero(has & (subset == "test"))
        shares = []
        for row in queries:
            hits = rank(index, index.embeddings[row], top=10, exclude=not_train)
            rows = [h.row for h in hits]
            shares.append(has[rows].mean())
        shares = np.array(shares)
        base = has[train].mean()
        print(f"| {name} | {len(queries)} | {shares.mean():.0%} | {base:.0%} | "
              f"{int((shares == 0).sum())} |")


if __name__ == "__main__":
    main()
