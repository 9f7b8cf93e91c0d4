"""How fine a colour histogram? Grid and bins of the `colour` feature kind, chosen on validation.

A linear probe (`colour_probe.probe`'s: one logistic regression per label, C=0.01, standardised
inputs) on the colour histograms alone of the 1856 photos' copy 0, for the colors11 labels. Only
the pipeline's *training* photos are used (``data/split.csv``, grouped split, seed 0): 25% of
them, drawn by photo, are the validation photos the choice is made on; the test photos are never
read. Run from the repository root after ``dvc repro split`` (the augmented store and the split)::

    python reports/real-weights/colour_choice.py > reports/real-weights/colour_choice.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from fashiondvc.features import colour_histograms
from fashiondvc.labels import resolve_label_set
from fashiondvc.store import ImageStore

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
VARIANTS = [((16, 4, 4), (1, 1)), ((16, 4, 4), (2, 2)), ((16, 4, 4), (4, 3)),
            ((16, 4, 4), (6, 4)), ((8, 3, 3), (4, 3)), ((8, 3, 3), (6, 4)),
            ((24, 4, 4), (4, 3))]


def validation_map(x: np.ndarray, y: np.ndarray, observed: np.ndarray, fit: np.ndarray,
                   val: np.ndarray) -> float:
    x = StandardScaler().fit(x[fit]).transform(x)
    aps = []
    for j in range(y.shape[1]):
        keep = fit[observed[fit, j]]
        model = LogisticRegression(C=0.01, max_iter=300).fit(x[keep], y[keep, j])
        rows = val[observed[val, j]]
        if y[rows, j].sum() > 0:
            aps.append(average_precision_score(y[rows, j], model.predict_proba(x[rows])[:, 1]))
    return float(np.mean(aps))


def main() -> None:
    split = pd.read_csv(ROOT / "data/split.csv").sort_values("index")
    originals = split[(split["copy"] == 0) & (split["subset"] == "train")]
    store = ImageStore(ROOT / "data/augmented")
    images = np.stack([store[int(r)] for r in originals["index"]])
    photos = originals["image_id"].to_numpy()
    order = np.random.default_rng(0).permutation(len(photos))
    val, fit = order[:len(order) // 4], order[len(order) // 4:]
    labels = pd.read_csv(ROOT / "data/ingested/labels.csv").set_index("image_id").loc[photos]
    values = labels[resolve_label_set("colors11")].to_numpy(float)
    observed, y = ~np.isnan(values), (values == 2).astype(float)
    print(f"colors11, {len(fit)} fitting and {len(val)} validation photos (training photos "
          "only), histograms alone\n")
    print("| bins (h x s x v) | grid (rows x cols) | width | validation mAP | seconds |")
    print("|---|---|---|---|---|")
    for bins, grid in VARIANTS:
        start = time.perf_counter()
        x = colour_histograms(images, bins=bins, grid=grid)
        score = validation_map(x, y, observed, fit, val)
        print(f"| {'x'.join(map(str, bins))} | {'x'.join(map(str, grid))} | {x.shape[1]} | "
              f"{score:.3f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
