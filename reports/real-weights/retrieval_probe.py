"""Which vector should search rank by? retrieval P@10 of a finished run, by embedding.

`fashiondvc.retrieval.precision_at_k` (the share of a query's true attributes that each of its 10
nearest collection photos has) with copy-0 photos as queries against the training photos' copy
0, for the head's hidden layer (what the index stores today) and for vectors made of the
predicted probabilities. The choice is made on the *validation* photos as queries; test is
printed beside it. Run from the repository root::

    python reports/real-weights/retrieval_probe.py beyond-attrs20-seed0
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ensemble_probe import cached  # noqa: E402

from fashiondvc.net import load_net  # noqa: E402
from fashiondvc.retrieval import chance_precision, l2_normalize, precision_at_k  # noqa: E402
from fashiondvc.rows import load_splits, scores  # noqa: E402


def main() -> None:
    name = sys.argv[1]
    net, config = load_net(cached(name, "models/net.pt"))
    split_csv = cached(name, "data/split.csv")
    data = load_splits("data/ingested/labels.csv", split_csv, "data/features", config.labels,
                       config.inputs, extractor=config.extractor)
    split = pd.read_csv(split_csv).sort_values("index")
    originals = np.flatnonzero((split["copy"] == 0).to_numpy())
    rows = {subset: np.intersect1d(getattr(data, f"{subset}_rows"), originals)
            for subset in ("train", "val", "test")}
    positive = (data.targets > 0.5) & data.mask.astype(bool)
    vectors = {}
    for subset, subset_rows in rows.items():
        probs, hidden = scores(net, data, subset_rows, torch.device("cpu"))
        vectors[subset] = {
            "hidden layer (today)": hidden,
            "probabilities": probs,
            "sqrt probabilities": np.sqrt(probs),
            "centred probabilities": probs - 0.5,
            "hidden + probabilities": np.hstack([l2_normalize(hidden), l2_normalize(probs)]),
        }
    print(f"{name}: queries = copy 0 of the validation / test photos, collection = copy 0 "
          f"of the {len(rows['train'])} training photos\n")
    print("| ranked by | val P@10 | test P@10 |")
    print("|---|---|---|")
    for kind in vectors["train"]:
        collection = l2_normalize(vectors["train"][kind])
        row = [precision_at_k(l2_normalize(vectors[s][kind]), positive[rows[s]], collection,
                              positive[rows["train"]], 10) for s in ("val", "test")]
        print(f"| {kind} | {row[0]:.3f} | {row[1]:.3f} |")
    chance = [chance_precision(positive[rows[s]], positive[rows["train"]]) for s in ("val", "test")]
    print(f"| chance | {chance[0]:.3f} | {chance[1]:.3f} |")


if __name__ == "__main__":
    main()
