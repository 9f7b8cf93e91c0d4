"""`evaluate.evaluate`: headline numbers recomputed independently; nothing chosen on test."""

import numpy as np
import pytest
import torch

from fashiondvc import metrics
from fashiondvc.evaluate import evaluate
from fashiondvc.net import build_net
from fashiondvc.train import Splits, TrainConfig, fit
from fashiondvc.trunk import feature_shape

NAMES = ["red", "blue", "black"]


def make_splits(seed=0, n=90):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, *feature_shape(13, 32))).astype(np.float32)
    targets = (features.reshape(n, -1)[:, :3] > 0).astype(np.float32)
    mask = rng.random(targets.shape) > 0.1
    rows = np.arange(n)
    return Splits(features, targets, mask, rows[:50], rows[70:], rows[50:70])


@pytest.fixture(scope="module")
def trained():
    data = make_splits()
    net = build_net("random", 13, 32, 16, len(NAMES), 0.0, seed=0)
    config = TrainConfig(k=1, lr=1e-2, epochs=5, batch_size=16, device="cpu")
    fit(net, data.subset(data.train_rows), data.subset(data.test_rows), config)
    return net, data, config


def probabilities(net, data):
    with torch.inference_mode():
        net.eval()
        return net.probabilities(net(torch.from_numpy(data.features))).numpy()


def test_headline_matches_an_independent_computation(trained):
    net, data, config = trained
    result = evaluate(net, data, NAMES, config)
    probs = probabilities(net, data)
    t = data.test_rows
    y, m = data.targets[t], data.mask[t]
    assert result.headline["f1_micro"] == pytest.approx(metrics.micro_f1(y, probs[t] >= 0.5, m))
    assert result.headline["map"] == pytest.approx(metrics.mean_average_precision(y, probs[t], m))
    assert result.headline["n_test"] == 20 and result.headline["n_val"] == 20
    both = np.concatenate([data.train_rows, t])
    assert result.headline["f1_train_test"] == pytest.approx(
        metrics.micro_f1(data.targets[both], probs[both] >= 0.5, data.mask[both]))
    assert result.headline["map"] > result.headline["baseline_map"]  # it learned something


def test_tuned_thresholds_depend_on_validation_rows_only(trained):
    net, data, config = trained
    first = evaluate(net, data, NAMES, config, thresholds="tuned")
    flipped = Splits(data.features, data.targets.copy(), data.mask, data.train_rows,
                     data.test_rows, data.val_rows)
    flipped.targets[data.test_rows] = 1 - flipped.targets[data.test_rows]  # test labels change
    second = evaluate(net, data, NAMES, config, thresholds="tuned")
    third = evaluate(net, flipped, NAMES, config, thresholds="tuned")
    np.testing.assert_array_equal(first.per_attribute["threshold"],
                                  third.per_attribute["threshold"])
    assert first.headline == second.headline
    assert not np.allclose(first.per_attribute["threshold"], 0.5)
