"""Weighted BCE against a hand-computed value, and a short training run."""

import math

import numpy as np
import pytest
import torch

from fashiondvc.model import build_net, feature_shape
from fashiondvc.train import FeatureSet, TrainConfig, fit, mean_loss, weighted_bce


def test_weighted_bce_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # image 2, label 1 is missing
    k = 3.0

    def sig(x):
        return 1 / (1 + math.exp(-x))

    by_hand = (-k * math.log(sig(0.0))        # positive, weight k
               - math.log(1 - sig(2.0))       # negative
               - k * math.log(sig(0.5))) / 2  # positive; the masked entry adds nothing
    assert weighted_bce(logits, targets, mask, k).item() == pytest.approx(by_hand, rel=1e-6)
    probs = torch.sigmoid(logits).numpy()
    assert mean_loss(probs, targets.numpy(), mask.numpy(), k) == pytest.approx(by_hand, rel=1e-5)


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
