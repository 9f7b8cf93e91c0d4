"""Training runs: learning, reproducibility, best-epoch selection on validation rows."""

import numpy as np
import pytest
import torch

from fashiondvc.errors import FashionError
from fashiondvc.net import build_net
from fashiondvc.train import FeatureSet, TrainConfig, fit
from fashiondvc.trunk import feature_shape


def toy_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    shape = feature_shape(13, 32)
    features = rng.random((n, *shape), dtype=np.float32)
    targets = (features.reshape(n, -1)[:, :2] > 0.5).astype(np.float32)
    mask = np.ones_like(targets, dtype=bool)
    return features, targets, mask


def test_fit_learns_and_records_history():
    features, targets, mask = toy_data()
    train = FeatureSet(features, np.arange(64), targets, mask)
    test = FeatureSet(features, np.arange(64, 96), targets, mask)
    net = build_net("random", 13, 32, hidden=16, n_labels=2, dropout=0.0, seed=0)
    history = fit(net, train, test, TrainConfig(k=1, lr=1e-2, epochs=6, batch_size=16))
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_training_is_reproducible():
    features, targets, mask = toy_data()
    runs = []
    for _ in range(2):
        train = FeatureSet(features, np.arange(64), targets, mask)
        test = FeatureSet(features, np.arange(64, 96), targets, mask)
        net = build_net("random", 13, 32, hidden=16, n_labels=2, dropout=0.5, seed=0)
        runs.append(fit(net, train, test, TrainConfig(k=2, lr=1e-3, epochs=2, batch_size=16)))
    assert runs[0] == runs[1]


def test_best_epoch_is_selected_on_validation_map_and_restored():
    features, targets, mask = toy_data()
    train = FeatureSet(features, np.arange(48), targets, mask)
    val = FeatureSet(features, np.arange(48, 72), targets, mask)
    test = FeatureSet(features, np.arange(72, 96), targets, mask)
    net = build_net("random", 13, 32, hidden=16, n_labels=2, dropout=0.0, seed=0)
    config = TrainConfig(k=1, lr=3e-2, epochs=6, batch_size=16, select="best")
    history = fit(net, train, test, config, val_set=val)
    best = max(history, key=lambda row: row["val_map"])
    assert [row["selected"] for row in history].count(1) == 1
    assert best["selected"] == 1
    # the network holds the selected epoch's weights: its validation mAP is that epoch's
    from fashiondvc.train import score

    assert score(net, val, config, torch.device("cpu"))["map"] == pytest.approx(best["val_map"])


def test_select_best_without_validation_rows_is_refused():
    features, targets, mask = toy_data()
    data = FeatureSet(features, np.arange(8), targets, mask)
    net = build_net("random", 13, 32, hidden=16, n_labels=2, dropout=0.0, seed=0)
    with pytest.raises(FashionError, match="train.select"):
        fit(net, data, data, TrainConfig(k=1, lr=1e-3, epochs=1, batch_size=4, select="best"))
