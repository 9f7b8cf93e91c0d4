"""Multi-label metrics that ignore missing labels.

Every function takes ``y_true`` (0/1), a prediction (0/1 or probabilities) and ``mask`` (True where
the label was observed), all of shape (n_images, n_labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve


def _check(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    mask = np.ones(y_true.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not (y_true.shape == y_pred.shape == mask.shape) or y_true.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: y_true {y_true.shape}, "
                         f"y_pred {y_pred.shape}, mask {mask.shape}")
    return y_true.astype(bool), y_pred, mask


def _f1(tp: np.ndarray | float, fp: np.ndarray | float, fn: np.ndarray | float):
    denominator = 2 * np.asarray(tp, dtype=np.float64) + fp + fn
    return np.divide(2 * np.asarray(tp, dtype=np.float64), denominator,
                     out=np.zeros_like(denominator, dtype=np.float64), where=denominator > 0)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives and false negatives over observed entries."""
    y_true, y_pred, mask = _check(y_true, y_pred, mask)
    y_pred = y_pred.astype(bool)
    tp = (y_true & y_pred & mask).sum(axis=0)
    fp = (~y_true & y_pred & mask).sum(axis=0)
    fn = (y_true & ~y_pred & mask).sum(axis=0)
    return tp, fp, fn


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None = None) -> float:
    """F1 over all observed (image, label) pairs pooled."""
    tp, fp, fn = confusion(y_true, y_pred, mask)
    return float(_f1(tp.sum(), fp.sum(), fn.sum()))


def per_label(y_true: np.ndarray, probs: np.ndarray, mask: np.ndarray | None,
              names: Sequence[str], threshold: float = 0.5) -> pd.DataFrame:
    """Per-attribute support, precision, recall, F1, accuracy and average precision."""
    y_true_b, probs, mask = _check(y_true, probs, mask)
    tp, fp, fn = confusion(y_true_b, probs >= threshold, mask)
    rows = []
    for j, name in enumerate(names):
        observed = mask[:, j]
        truth, scores = y_true_b[observed, j], probs[observed, j]
        has_both = 0 < truth.sum() < len(truth)
        rows.append({
            "attribute": name,
            "support": int(truth.sum()),
            "observed": int(observed.sum()),
            "precision": float(tp[j] / (tp[j] + fp[j])) if tp[j] + fp[j] else 0.0,
            "recall": float(tp[j] / (tp[j] + fn[j])) if tp[j] + fn[j] else 0.0,
            "f1": float(_f1(tp[j], fp[j], fn[j])),
            "accuracy": float(((scores >= threshold) == truth).mean()) if len(truth) else 0.0,
            "average_precision": (float(average_precision_score(truth, scores)) if has_both
                                  else float("nan")),
        })
    return pd.DataFrame(rows)


def keras_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Keras ``categorical_accuracy``: argmax of truth equals argmax of prediction.

    Keras resolves ``metrics=["accuracy"]`` to this with a custom loss, which is likely what the
    paper's "Test_Accuracy" measured (it explains values as low as 0.01).
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    if not len(y_true):
        return 0.0
    return float((y_true.argmax(axis=1) == probs.argmax(axis=1)).mean())


def summary(y_true: np.ndarray, probs: np.ndarray, mask: np.ndarray | None,
            threshold: float = 0.5) -> dict[str, float]:
    """Headline metrics of one subset: micro/macro F1, accuracies, mAP."""
    y_true_b, probs, mask = _check(y_true, probs, mask)
    y_pred = probs >= threshold
    tp, fp, fn = confusion(y_true_b, y_pred, mask)
    correct = (y_pred == y_true_b) | ~mask
    ap = [average_precision_score(y_true_b[mask[:, j], j], probs[mask[:, j], j])
          for j in range(y_true_b.shape[1])
          if 0 < y_true_b[mask[:, j], j].sum() < mask[:, j].sum()]
    return {
        "f1_micro": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "f1_macro": float(_f1(tp, fp, fn).mean()),
        "accuracy_labelwise": float((correct & mask).sum() / max(mask.sum(), 1)),
        "accuracy_exact": float(correct.all(axis=1).mean()) if len(correct) else 0.0,
        "accuracy_keras": keras_accuracy(y_true_b & mask, probs),
        "mean_average_precision": float(np.mean(ap)) if ap else float("nan"),
    }


def pr_curves(y_true: np.ndarray, probs: np.ndarray, mask: np.ndarray | None,
              names: Sequence[str], points: int = 50) -> pd.DataFrame:
    """Precision-recall curves per attribute, thinned to about ``points`` points each."""
    y_true_b, probs, mask = _check(y_true, probs, mask)
    frames = []
    for j, name in enumerate(names):
        truth, scores = y_true_b[mask[:, j], j], probs[mask[:, j], j]
        if not 0 < truth.sum() < len(truth):
            continue
        precision, recall, _ = precision_recall_curve(truth, scores)
        keep = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).astype(int))
        frames.append(pd.DataFrame({"attribute": name, "recall": recall[keep],
                                    "precision": precision[keep]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["attribute", "recall", "precision"])
