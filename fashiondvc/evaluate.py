"""Evaluation of a trained network on the stored features: metrics, tables and curves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashiondvc import metrics
from fashiondvc.model import AttributeNet
from fashiondvc.train import Splits, loader, mean_loss, predict


@dataclass
class Evaluation:
    headline: dict[str, float]
    per_attribute: pd.DataFrame
    pr_curves: pd.DataFrame


def evaluate(net: AttributeNet, data: Splits, names: list[str], *, k: float,
             threshold: float, batch_size: int, device: str = "cpu",
             precision: str = "fp32") -> Evaluation:
    """Metrics of ``net`` on the test rows, the train rows and both together.

    The headline holds the test metrics unprefixed, ``train_*`` ones for the train rows, the
    weighted BCE of both, and ``f1_train_test`` (micro F1 over all rows: the paper's column).
    """
    import torch

    from fashiondvc.features import resolve_device

    target = resolve_device(device)
    net.to(target)
    torch.manual_seed(0)
    everything = data.subset(np.arange(len(data.features)))
    probs = predict(net, loader(everything, batch_size, shuffle=False, seed=0), target,
                    precision)
    results = {}
    for name, rows in (("train", data.train_rows), ("test", data.test_rows)):
        y, m, p = data.targets[rows], data.mask[rows], probs[rows]
        results[name] = {**metrics.summary(y, p, m, threshold),
                         "loss": mean_loss(p, y, m, k), "n_images": int(len(rows))}
    test = results["test"]
    headline = {
        "f1_micro": test["f1_micro"],
        "f1_macro": test["f1_macro"],
        "f1_train_test": metrics.micro_f1(data.targets, probs >= threshold, data.mask),
        "accuracy_labelwise": test["accuracy_labelwise"],
        "accuracy_exact": test["accuracy_exact"],
        "accuracy_keras": test["accuracy_keras"],
        "map": test["mean_average_precision"],
        "train_loss": results["train"]["loss"],
        "test_loss": test["loss"],
        "train_f1_micro": results["train"]["f1_micro"],
        "n_train": results["train"]["n_images"],
        "n_test": test["n_images"],
    }
    test_rows = data.test_rows
    per_attribute = metrics.per_label(data.targets[test_rows], probs[test_rows],
                                      data.mask[test_rows], names, threshold)
    curves = metrics.pr_curves(data.targets[test_rows], probs[test_rows], data.mask[test_rows],
                               names)
    return Evaluation(headline, per_attribute, curves)
