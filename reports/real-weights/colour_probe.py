"""Colour probe: do colour histograms add what conv features lack for the colour labels?

A linear probe (one logistic regression per label, scikit-learn, C=0.01, standardised inputs) on
the 1856 original photos (copy 0 of each photo in the augmented store), a random 67/33 photo
split (seed 0) with 20% of the training photos held out to tune one F1-optimal threshold per label
-- the setting of the issue's reference table. Feature sets:

- ``gap``: global average of the stored trunk output (conv5_3 pooled, 512);
- ``gap+side``: plus the stored side features (average and max of pool1..pool4, 1920), which is
  what the ``multiscale`` head sees;
- ``hist``: spatial colour histograms: HSV quantised to 16 x 4 x 4 bins in each cell of a
  4 x 3 grid (3072, square-rooted: the Hellinger map);
- ``gap+side+hist``: all of them.

Run from the repository root after a real-weights ``featurize`` (``data/features``)::

    python reports/real-weights/colour_probe.py > reports/real-weights/colour_probe.md
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from fashiondvc.labels import resolve_label_set
from fashiondvc.store import ImageStore

AUGMENTED, FEATURES, LABELS = "data/augmented", "data/features", "data/ingested/labels.csv"


def colour_histogram(image: Image.Image, grid: tuple[int, int] = (4, 3)) -> np.ndarray:
    """Square-rooted HSV histograms (16 hue x 4 saturation x 4 value) per grid cell, flattened."""
    hsv = np.asarray(image.convert("HSV")).astype(np.int64)
    code = (hsv[..., 0] * 16 // 256) * 16 + (hsv[..., 1] * 4 // 256) * 4 + hsv[..., 2] * 4 // 256
    rows, cols = grid
    height, width = code.shape
    cells = [code[i * height // rows:(i + 1) * height // rows,
                  j * width // cols:(j + 1) * width // cols].ravel()
             for i in range(rows) for j in range(cols)]
    return np.sqrt(np.concatenate([np.bincount(c, minlength=256) / c.size for c in cells]))


def probe(x: np.ndarray, y: np.ndarray, observed: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Test (mAP, micro-F1 at thresholds tuned on validation) of a per-label linear probe."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(0.33 * len(x))
    test, train = order[:n_test], order[n_test:]
    val, fit = train[:int(0.2 * len(train))], train[int(0.2 * len(train)):]
    x = StandardScaler().fit(x[fit]).transform(x)
    scores = np.zeros_like(y)
    for j in range(y.shape[1]):
        keep = fit[observed[fit, j]]
        model = LogisticRegression(C=0.01, max_iter=300).fit(x[keep], y[keep, j])
        scores[:, j] = model.predict_proba(x)[:, 1]
    aps, thresholds = [], []
    for j in range(y.shape[1]):
        t_rows, v_rows = test[observed[test, j]], val[observed[val, j]]
        if y[t_rows, j].sum() > 0:
            aps.append(average_precision_score(y[t_rows, j], scores[t_rows, j]))
        grid = np.linspace(0.02, 0.98, 49)
        f1 = [2 * ((scores[v_rows, j] >= t) & (y[v_rows, j] == 1)).sum()
              / max(1, (scores[v_rows, j] >= t).sum() + y[v_rows, j].sum()) for t in grid]
        thresholds.append(grid[int(np.argmax(f1))])
    predicted = scores[test] >= np.array(thresholds)
    mask = observed[test]
    tp = (predicted & (y[test] == 1) & mask).sum()
    return float(np.mean(aps)), float(2 * tp / ((predicted & mask).sum() + (y[test] * mask).sum()))


def main() -> None:
    index = pd.read_csv(f"{AUGMENTED}/index.csv")
    rows = index.index[index["copy"] == 0].to_numpy()
    store = ImageStore(AUGMENTED)
    hist = np.stack([colour_histogram(Image.open(io.BytesIO(store.jpeg(r))).convert("RGB"))
                     for r in rows]).astype(np.float32)
    trunk = np.load(f"{FEATURES}/features.npy", mmap_mode="r")
    gap = np.stack([trunk[r].astype(np.float32).mean(axis=(1, 2)) for r in rows])
    side = np.load(f"{FEATURES}/side.npy", mmap_mode="r")[rows].astype(np.float32)
    labels = pd.read_csv(LABELS).set_index("image_id").loc[index.loc[rows, "image_id"]]
    sets = {"gap": gap, "gap+side": np.hstack([gap, side]), "hist": hist,
            "gap+side+hist": np.hstack([gap, side, hist])}
    print("| labels | features | width | test mAP | test micro-F1 (tuned) |")
    print("|---|---|---|---|---|")
    for label_set in ("attrs20", "colors11"):
        values = labels[resolve_label_set(label_set)].to_numpy(float)
        observed, y = ~np.isnan(values), (values == 2).astype(float)
        for name, x in sets.items():
            ap, f1 = probe(x, y, observed)
            print(f"| {label_set} | {name} | {x.shape[1]} | {ap:.3f} | {f1:.3f} |")


if __name__ == "__main__":
    main()
