"""`evaluate.evaluate`: headline numbers recomputed independently; nothing chosen on test."""

import numpy as np
import pytest
import torch

from fashiondvc import metrics
from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig
from fashiondvc.evaluate import evaluate
from fashiondvc.net import build_net
from fashiondvc.rows import Splits
from fashiondvc.train import fit

NAMES = ("red", "blue", "black")
#: What the frozen part gives at frozen_convs=13 and 32 px.
SHAPE = (512, 1, 1)


def make_splits(seed=0, n=90):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, *SHAPE)).astype(np.float32)
    targets = (features.reshape(n, -1)[:, :3] > 0).astype(np.float32)
    mask = rng.random(targets.shape) > 0.1
    rows = np.arange(n)
    return Splits({"trunk": features}, targets, mask, rows[:50], rows[70:], rows[50:70])


@pytest.fixture(scope="module")
def trained():
    data = make_splits()
    config = TrainConfig(k=1, lr=1e-2, epochs=5, batch_size=16, device="cpu")
    model_config = ModelConfig(labels=NAMES,
                               extractor=ExtractorConfig("vgg16", "random", 13, 32, "fp32"),
                               input_shapes={"trunk": SHAPE}, train=config, hidden=16,
                               dropout=0.0)
    net = build_net(model_config, seed=0)
    fit(net, data.subset(data.train_rows), data.subset(data.test_rows), config)
    return net, data, model_config


def probabilities(net, data):
    with torch.inference_mode():
        net.eval()
        return net.probabilities(net({"trunk": torch.from_numpy(data.arrays["trunk"])})).numpy()


def test_headline_matches_an_independent_computation(trained):
    net, data, config = trained
    result = evaluate(net, data, config)
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
    assert list(result.per_attribute["threshold"]) == [0.5] * len(NAMES)


def test_fixed_threshold_is_the_one_given(trained):
    net, data, config = trained
    result = evaluate(net, data, config, threshold=0.3)
    probs = probabilities(net, data)
    t = data.test_rows
    assert result.headline["f1_micro"] == pytest.approx(
        metrics.micro_f1(data.targets[t], probs[t] >= 0.3, data.mask[t]))
    assert result.headline["f1_micro_fixed"] == result.headline["f1_micro"]
    assert np.allclose(result.per_attribute["threshold"], 0.3)


def test_tuned_thresholds_depend_on_validation_rows_only(trained):
    net, data, config = trained
    first = evaluate(net, data, config, thresholds="tuned")
    flipped = Splits(data.arrays, data.targets.copy(), data.mask, data.train_rows,
                     data.test_rows, data.val_rows)
    flipped.targets[data.test_rows] = 1 - flipped.targets[data.test_rows]  # test labels change
    second = evaluate(net, data, config, thresholds="tuned")
    third = evaluate(net, flipped, config, thresholds="tuned")
    np.testing.assert_array_equal(first.per_attribute["threshold"],
                                  third.per_attribute["threshold"])
    assert first.headline == second.headline
    assert first.headline["map"] != third.headline["map"]  # the flipped test labels were read
    assert not np.allclose(first.per_attribute["threshold"], 0.5)


def test_flip_tta_averages_each_image_with_its_mirror(trained):
    net, data, config = trained
    rng = np.random.default_rng(1)
    mirrored = {"trunk": rng.standard_normal(data.arrays["trunk"].shape).astype(np.float32)}
    both = Splits(data.arrays, data.targets, data.mask, data.train_rows, data.test_rows,
                  data.val_rows, mirrored=mirrored)
    plain = probabilities(net, data)
    with torch.inference_mode():
        flipped = net.probabilities(net({"trunk": torch.from_numpy(mirrored["trunk"])})).numpy()
    mean = (plain + flipped) / 2
    t = data.test_rows
    result = evaluate(net, both, config, tta="flip")
    assert result.headline["map"] == pytest.approx(
        metrics.mean_average_precision(data.targets[t], mean[t], data.mask[t]))
    assert result.headline["map"] != pytest.approx(evaluate(net, both, config).headline["map"])
    # losses stay those of the images as stored
    assert result.headline["test_loss"] == pytest.approx(
        evaluate(net, both, config).headline["test_loss"])
    from fashiondvc.rows import scores

    probs, embedded = scores(net, both, t, torch.device("cpu"), tta="flip")
    assert np.allclose(probs, mean[t], atol=1e-6) and embedded.shape == (len(t), 16)
    with pytest.raises(Exception, match="no mirrored features"):
        evaluate(net, data, config, tta="flip")


def test_scores_answer_rows_in_the_order_asked_and_predict_refuses_unsorted_rows(trained):
    from fashiondvc.rows import predict, scores

    net, data, _ = trained
    rows = np.concatenate([data.val_rows, data.test_rows[::-1], data.train_rows[:7]])
    probs, _ = scores(net, data, rows, torch.device("cpu"), batch_size=16)
    assert np.allclose(probs, probabilities(net, data)[rows], atol=1e-6)
    with pytest.raises(ValueError, match="ascending"):
        predict(net, data.subset(rows), torch.device("cpu"))
