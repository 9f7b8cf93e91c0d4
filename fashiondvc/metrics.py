"""Multi-label metrics that ignore missing labels.

Every function takes ``y_true`` (0/1), a prediction (0/1 or probabilities) and ``mask`` (True where
the label was observed), all of shape (n_images, n_labels). A ``threshold`` is a number or one per
label, shape (n_labels,). A label never observed in a subset has no precision, recall or F1 there:
it is left out of macro averages and reported as NaN (empty in CSV, null in JSON).
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


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None = None
                      ) -> np.ndarray:
    """Per-label balanced accuracy: the mean of the true positive and true negative rates.

    Unlike plain accuracy it is 0.5 for any constant prediction, however rare the label
    (Brodersen et al., "The balanced accuracy and its posterior distribution", ICPR 2010;
    sklearn's ``balanced_accuracy_score``). A label without both classes observed gets NaN.
    Returns shape (n_labels,), float64.
    """
    y_true, y_pred, mask = _check(y_true, y_pred, mask)
    y_pred = y_pred.astype(bool)
    positives, negatives = (y_true & mask).sum(0), (~y_true & mask).sum(0)
    tpr = np.divide((y_true & y_pred & mask).sum(0), positives, out=np.full(len(positives),
                    np.nan), where=positives > 0)
    tnr = np.divide((~y_true & ~y_pred & mask).sum(0), negatives, out=np.full(len(negatives),
                    np.nan), where=negatives > 0)
    return (tpr + tnr) / 2


def label_accuracy(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None = None
                   ) -> np.ndarray:
    """Per-label accuracy over the observed entries (NaN where none), shape (n_labels,)."""
    y_true, y_pred, mask = _check(y_true, y_pred, mask)
    correct = ((y_pred.astype(bool) == y_true) & mask).sum(0)
    seen = mask.sum(0)
    return np.divide(correct, seen, out=np.full(len(seen), np.nan), where=seen > 0)


def per_label(y_true: np.ndarray, probs: np.ndarray, mask: np.ndarray | None,
              names: Sequence[str], threshold: float | np.ndarray = 0.5) -> pd.DataFrame:
    """Per-attribute support, precision, recall, F1, accuracy, balanced accuracy, average
    precision, threshold.

    ``evaluated`` is False for a label never observed in these rows: its metrics are NaN.
    """
    y_true_b, probs, mask = _check(y_true, probs, mask)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (probs.shape[1],))
    tp, fp, fn = confusion(y_true_b, probs >= thresholds, mask)
    balanced = balanced_accuracy(y_true_b, probs >= thresholds, mask)
    nan = float("nan")
    rows = []
    for j, name in enumerate(names):
        observed = mask[:, j]
        truth, scores = y_true_b[observed, j], probs[observed, j]
        has_both = 0 < truth.sum() < len(truth)
        seen = bool(len(truth))
        rows.append({
            "attribute": name,
            "evaluated": seen,
            "support": int(truth.sum()),
            "observed": int(observed.sum()),
            "threshold": float(thresholds[j]),
            "precision": float(tp[j] / (tp[j] + fp[j])) if tp[j] + fp[j] else (0.0 if seen
                                                                               else nan),
            "recall": float(tp[j] / (tp[j] + fn[j])) if tp[j] + fn[j] else (0.0 if seen
                                                                            else nan),
            "f1": float(_f1(tp[j], fp[j], fn[j])) if seen else nan,
            "accuracy": float(((scores >= thresholds[j]) == truth).mean()) if seen else nan,
            "balanced_accuracy": float(balanced[j]),
            "average_precision": (float(average_precision_score(truth, scores)) if has_both
                                  else nan),
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
            threshold: float | np.ndarray = 0.5) -> dict[str, float]:
    """Headline metrics of one subset: micro/macro F1, accuracies, mAP.

    ``f1_macro`` and ``accuracy_mean`` (mean per-attribute accuracy, the literature's figure)
    average the labels observed at least once; ``balanced_accuracy_mean`` and
    ``mean_average_precision`` the labels with both classes observed (NaN if none).
    """
    y_true_b, probs, mask = _check(y_true, probs, mask)
    y_pred = probs >= np.asarray(threshold, dtype=np.float64)
    tp, fp, fn = confusion(y_true_b, y_pred, mask)
    seen = mask.any(axis=0)
    correct = (y_pred == y_true_b) | ~mask
    ap = [average_precision_score(y_true_b[mask[:, j], j], probs[mask[:, j], j])
          for j in range(y_true_b.shape[1])
          if 0 < y_true_b[mask[:, j], j].sum() < mask[:, j].sum()]
    balanced = balanced_accuracy(y_true_b, y_pred, mask)
    nan = float("nan")
    return {
        "f1_micro": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "f1_macro": float(_f1(tp, fp, fn)[seen].mean()) if seen.any() else nan,
        "accuracy_mean": float(np.nanmean(label_accuracy(y_true_b, y_pred, mask)))
        if seen.any() else nan,
        "balanced_accuracy_mean": float(np.nanmean(balanced)) if np.isfinite(balanced).any()
        else nan,
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


def mean_average_precision(y_true: np.ndarray, probs: np.ndarray,
                           mask: np.ndarray | None = None) -> float:
    """Mean over labels (with both classes observed) of sklearn's average precision; NaN if none."""
    return summary(y_true, probs, mask)["mean_average_precision"]


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, mask: np.ndarray | None,
                    default: float = 0.5) -> np.ndarray:
    """Per-label decision thresholds that maximise each label's F1 on these rows.

    Meant for validation rows, never test. Each threshold is the midpoint between the
    F1-optimal score and the next lower one (so it does not sit exactly on a validation score);
    a label without an observed positive keeps ``default``. Returns shape (n_labels,), float64.
    """
    y_true_b, probs, mask = _check(y_true, probs, mask)
    out = np.full(probs.shape[1], default, dtype=np.float64)
    for j in range(probs.shape[1]):
        truth, scores = y_true_b[mask[:, j], j], probs[mask[:, j], j]
        if not truth.any():
            continue
        precision, recall, cuts = precision_recall_curve(truth, scores)
        p, r = precision[:-1], recall[:-1]
        f1 = np.divide(2 * p * r, p + r, out=np.zeros(len(cuts)), where=(p + r) > 0)
        best = int(np.argmax(f1))
        lower = scores[scores < cuts[best]]
        out[j] = (cuts[best] + lower.max()) / 2 if len(lower) else cuts[best] / 2
    return out


def frequency_baseline(train_y: np.ndarray, train_mask: np.ndarray, test_y: np.ndarray,
                       test_mask: np.ndarray) -> dict[str, float]:
    """Micro-F1, mAP and mean per-attribute accuracy on test of predictors that never look
    at the image.

    It scores every image with the training frequency of each label (so its AP per label is
    the label's test prevalence) and predicts positive the labels that, always predicted, give
    the best training micro-F1 (the most frequent ones first): the best constant predictor.
    ``accuracy_mean`` is that of the majority class of each label (its balanced accuracy is
    0.5 by definition): what plain accuracy credits a model for knowing nothing.
    """
    train_y, _, train_mask = _check(train_y, train_y, train_mask)
    test_y, _, test_mask = _check(test_y, test_y, test_mask)
    frequency = (train_y & train_mask).sum(0) / np.maximum(train_mask.sum(0), 1)
    order = np.argsort(-frequency, kind="stable")
    best_f1, best_k = 0.0, 0
    for k in range(1, len(order) + 1):
        chosen = np.zeros(len(order), dtype=bool)
        chosen[order[:k]] = True
        f1 = micro_f1(train_y, np.broadcast_to(chosen, train_y.shape), train_mask)
        if f1 > best_f1:
            best_f1, best_k = f1, k
    chosen = np.zeros(len(order), dtype=bool)
    chosen[order[:best_k]] = True
    scores = np.broadcast_to(frequency, test_y.shape).astype(np.float64)
    majority = np.broadcast_to(frequency >= 0.5, test_y.shape)
    return {"f1_micro": micro_f1(test_y, np.broadcast_to(chosen, test_y.shape), test_mask),
            "map": mean_average_precision(test_y, scores, test_mask),
            "accuracy_mean": float(np.nanmean(label_accuracy(test_y, majority, test_mask)))}
