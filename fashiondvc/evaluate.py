"""Evaluation of a trained network on the stored features: metrics, tables and curves.

Decision thresholds are ``evaluate.threshold`` for every label, or tuned per label on the
validation rows (`metrics.tune_thresholds`); nothing is ever chosen on the test rows. Every
evaluation also scores the label-frequency predictor on the same split (`metrics.frequency_
baseline`): a model is only as good as its margin over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fashiondvc import metrics
from fashiondvc.net import AttributeNet
from fashiondvc.runtime import resolve_device
from fashiondvc.train import Splits, TrainConfig, batch_loss, loader, predict


@dataclass
class Evaluation:
    """``headline`` (metrics.json), ``per_attribute`` and ``pr_curves`` tables (test rows)."""

    headline: dict[str, float]
    per_attribute: pd.DataFrame
    pr_curves: pd.DataFrame


def evaluate(net: AttributeNet, data: Splits, names: list[str], config: TrainConfig, *,
             thresholds: str = "fixed", batch_size: int = 256) -> Evaluation:
    """Metrics of ``net`` on the test rows, the train rows, both together, and validation.

    The headline holds the test metrics unprefixed (at the chosen thresholds), ``train_*`` and
    ``val_*`` ones, the training loss of train and test rows (``config``'s loss),
    ``f1_train_test`` (micro F1 over train and test rows together: the paper's column),
    ``f1_micro_fixed`` (test micro F1 at ``config.threshold``), and the label-frequency
    predictor's ``baseline_f1_micro`` and ``baseline_map``.
    """
    target = resolve_device(config.device)
    net.to(target)
    torch.manual_seed(0)
    everything = data.subset(np.arange(len(data.features)))
    outputs = predict(net, loader(everything, batch_size, shuffle=False, seed=0), target,
                      config.precision)
    probs = net.probabilities(outputs.to(target)).cpu().numpy()
    y, m = data.targets, data.mask.astype(bool)
    if thresholds == "tuned":
        cut = metrics.tune_thresholds(y[data.val_rows], probs[data.val_rows],
                                      m[data.val_rows], config.threshold)
    else:
        cut = np.full(len(names), config.threshold)

    def subset(rows: np.ndarray) -> dict:
        with torch.no_grad():
            loss = float(batch_loss(net, outputs[rows].to(target),
                                    torch.from_numpy(y[rows]).to(target),
                                    torch.from_numpy(m[rows].astype(np.float32)).to(target),
                                    config)) if len(rows) else float("nan")
        return {**metrics.summary(y[rows], probs[rows], m[rows], cut), "loss": loss,
                "n_images": int(len(rows))}

    train, test = subset(data.train_rows), subset(data.test_rows)
    both = np.concatenate([data.train_rows, data.test_rows])
    baseline = metrics.frequency_baseline(y[data.train_rows], m[data.train_rows],
                                          y[data.test_rows], m[data.test_rows])
    headline = {
        "f1_micro": test["f1_micro"],
        "f1_macro": test["f1_macro"],
        "f1_micro_fixed": metrics.micro_f1(y[data.test_rows],
                                           probs[data.test_rows] >= config.threshold,
                                           m[data.test_rows]),
        "f1_train_test": metrics.micro_f1(y[both], probs[both] >= cut, m[both]),
        "accuracy_labelwise": test["accuracy_labelwise"],
        "accuracy_exact": test["accuracy_exact"],
        "accuracy_keras": test["accuracy_keras"],
        "map": test["mean_average_precision"],
        "train_loss": train["loss"],
        "test_loss": test["loss"],
        "train_f1_micro": train["f1_micro"],
        "baseline_f1_micro": baseline["f1_micro"],
        "baseline_map": baseline["map"],
        "n_train": train["n_images"],
        "n_test": test["n_images"],
    }
    if len(data.val_rows):
        val = subset(data.val_rows)
        headline.update(val_f1_micro=val["f1_micro"], val_map=val["mean_average_precision"],
                        n_val=val["n_images"])
    rows = data.test_rows
    per_attribute = metrics.per_label(y[rows], probs[rows], m[rows], names, cut)
    curves = metrics.pr_curves(y[rows], probs[rows], m[rows], names)
    return Evaluation(headline, per_attribute, curves)
