"""Evaluation of a trained network on the stored features: metrics, tables and curves.

Decision thresholds are ``evaluate.threshold`` for every label, or tuned per label on the
validation rows (`metrics.tune_thresholds`); nothing is ever chosen on the test rows. Every
evaluation also scores the label-frequency predictor on the same split (`metrics.frequency_
baseline`): a model is only as good as its margin over it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fashiondvc import losses, metrics
from fashiondvc.config import ModelConfig
from fashiondvc.errors import FashionError
from fashiondvc.net import AttributeNet
from fashiondvc.rows import Splits, predict
from fashiondvc.runtime import resolve_device


@dataclass
class Evaluation:
    """``headline`` (metrics.json), ``per_attribute`` and ``pr_curves`` tables (test rows)."""

    headline: dict[str, float]
    per_attribute: pd.DataFrame
    pr_curves: pd.DataFrame


def evaluate(net: AttributeNet, data: Splits, config: ModelConfig, *, threshold: float = 0.5,
             thresholds: str = "fixed", tta: str = "none", batch_size: int = 256
             ) -> Evaluation:
    """Metrics of ``net`` on the test rows, the train rows, both together, and validation.

    The headline holds the test metrics unprefixed (at the chosen thresholds), ``train_*`` and
    ``val_*`` ones, the training loss of train and test rows (``config``'s loss),
    ``f1_train_test`` (micro F1 over train and test rows together: the paper's column),
    ``f1_micro_fixed`` (test micro F1 at ``threshold``), and the label-frequency predictor's
    ``baseline_f1_micro`` and ``baseline_map``. The network runs as it trained
    (``config.train``'s device and precision); ``thresholds`` is ``evaluate.thresholds``;
    with ``tta="flip"`` (``evaluate.tta``; ``data`` loaded with ``mirror=True``) the scores
    are the mean over each image and its mirror (losses stay those of the images as stored).
    The headline's ``accuracy_mean`` and ``balanced_accuracy`` are means over attributes of
    their accuracy and balanced accuracy (`metrics.balanced_accuracy`), the figures the
    literature on this dataset reports.

    Raises
    ------
    FashionError
        If the network's scores are not finite (weights that diverged in training).
    """
    names, train_config = list(config.labels), config.train
    target = resolve_device(train_config.device)
    net.to(target)
    torch.manual_seed(0)
    everything = data.subset(np.arange(len(data)))
    outputs = predict(net, everything, target, train_config.precision, batch_size=batch_size)
    probs = net.probabilities(outputs.to(target)).cpu().numpy()
    if tta == "flip":
        mirrored = predict(net, data.subset(everything.rows, mirror=True), target,
                           train_config.precision, batch_size=batch_size)
        probs = (probs + net.probabilities(mirrored.to(target)).cpu().numpy()) / 2
    if not np.isfinite(probs).all():  # scikit-learn would refuse them with a traceback
        bad = int((~np.isfinite(probs)).any(axis=1).sum())
        raise FashionError(f"the model's scores are not finite (NaN) for {bad} of {len(probs)} "
                           "photos: its training diverged; retrain with a lower lr (it had "
                           f"{train_config.lr:g})")
    y, m = data.targets, data.mask.astype(bool)
    if thresholds == "tuned":
        cut = metrics.tune_thresholds(y[data.val_rows], probs[data.val_rows],
                                      m[data.val_rows], threshold)
    else:
        cut = np.full(len(names), threshold)

    def subset(rows: np.ndarray) -> dict:
        with torch.no_grad():
            loss = float(losses.batch_loss(
                net, outputs[rows].to(target), torch.from_numpy(y[rows]).to(target),
                torch.from_numpy(m[rows].astype(np.float32)).to(target),
                train_config)) if len(rows) else float("nan")
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
                                           probs[data.test_rows] >= threshold,
                                           m[data.test_rows]),
        "f1_train_test": metrics.micro_f1(y[both], probs[both] >= cut, m[both]),
        "accuracy_labelwise": test["accuracy_labelwise"],
        "accuracy_exact": test["accuracy_exact"],
        "accuracy_keras": test["accuracy_keras"],
        "accuracy_mean": test["accuracy_mean"],
        "balanced_accuracy": test["balanced_accuracy_mean"],
        "map": test["mean_average_precision"],
        "train_loss": train["loss"],
        "test_loss": test["loss"],
        "train_f1_micro": train["f1_micro"],
        "baseline_f1_micro": baseline["f1_micro"],
        "baseline_map": baseline["map"],
        "baseline_accuracy_mean": baseline["accuracy_mean"],
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


def run_evaluation(params, labels_csv: str | os.PathLike, split_csv: str | os.PathLike,
                   features_dir: str | os.PathLike, model_path: str | os.PathLike,
                   history_csv: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """The evaluate stage: write ``metrics.json``, ``per_attribute.csv``, ``pr_curves.csv`` and
    ``plots/`` into ``out_dir``; return the headline (``metrics.json``'s content).

    ``params`` is the validated `fashiondvc.params.Params` (``evaluate.threshold``,
    ``evaluate.thresholds``, ``evaluate.tta``, and ``search.embedding`` for
    ``retrieval_p10``); everything else comes with the saved model.
    """
    import json
    from pathlib import Path

    from fashiondvc import plots
    from fashiondvc.io import write_csv, write_json
    from fashiondvc.net import load_net
    from fashiondvc.retrieval import retrieval_metrics
    from fashiondvc.rows import load_splits

    out = Path(out_dir)
    net, config = load_net(model_path)
    options = params.evaluate
    data = load_splits(labels_csv, split_csv, features_dir, config.labels, config.inputs,
                       extractor=config.extractor, mirror=options.tta == "flip")
    result = evaluate(net, data, config, threshold=options.threshold,
                      thresholds=options.thresholds, tta=options.tta)
    manifest = json.loads((Path(labels_csv).parent / "manifest.json").read_text())
    headline = {**result.headline,
                **retrieval_metrics(net, data, split_csv, tta=options.tta,
                                    embedding=params.search.embedding),
                "n_skipped": manifest["n_skipped"]}
    write_json(out / "metrics.json", headline)
    write_csv(out / "per_attribute.csv", result.per_attribute)
    write_csv(out / "pr_curves.csv", result.pr_curves)
    plots.draw_all(pd.read_csv(history_csv), result.per_attribute, result.pr_curves,
                   out / "plots")
    return headline
