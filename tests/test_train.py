"""Training runs: learning, reproducibility, best-epoch selection on validation rows."""

import copy

import numpy as np
import pytest
import torch
from conftest import PROJECT

from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig
from fashiondvc.errors import FashionError
from fashiondvc.net import build_net
from fashiondvc.params import load_params, validate
from fashiondvc.rows import FeatureSet
from fashiondvc.train import fit, score

#: What the frozen part gives at frozen_convs=13 and 32 px.
SHAPE = (512, 1, 1)
HISTORY = ["epoch", "train_loss", "test_loss", "test_map"]


def toy_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.random((n, *SHAPE), dtype=np.float32)
    targets = (features.reshape(n, -1)[:, :2] > 0.5).astype(np.float32)
    mask = np.ones_like(targets, dtype=bool)
    return {"trunk": features}, targets, mask


def toy_net(dropout: float, seed: int = 0):
    config = ModelConfig(labels=("a", "b"),
                         extractor=ExtractorConfig("vgg16", "random", 13, 32, "fp32"),
                         input_shapes={"trunk": SHAPE},
                         train=TrainConfig(k=1, lr=1e-3, epochs=1, batch_size=16),
                         hidden=16, dropout=dropout)
    return build_net(config, seed=seed)


def test_fit_learns_and_records_history():
    features, targets, mask = toy_data()
    train = FeatureSet(features, np.arange(64), targets, mask)
    test = FeatureSet(features, np.arange(64, 96), targets, mask)
    net = toy_net(dropout=0.0)
    history = fit(net, train, test, TrainConfig(k=1, lr=1e-2, epochs=6, batch_size=16))
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert all(list(row) == [*HISTORY, "selected"] for row in history)  # no val_*, no f1
    assert [row["selected"] for row in history] == [0] * 5 + [1]  # select: last
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_map"] == pytest.approx(
        score(net, test, TrainConfig(k=1, lr=1e-2, epochs=6, batch_size=16),
              torch.device("cpu"))["map"])


def test_training_is_reproducible():
    features, targets, mask = toy_data()
    runs = []
    for _ in range(2):
        train = FeatureSet(features, np.arange(64), targets, mask)
        test = FeatureSet(features, np.arange(64, 96), targets, mask)
        net = toy_net(dropout=0.5)
        runs.append(fit(net, train, test, TrainConfig(k=2, lr=1e-3, epochs=2, batch_size=16)))
    assert runs[0] == runs[1]
    assert runs[0][0]["train_loss"] != runs[0][1]["train_loss"]  # it did train


def test_best_epoch_is_selected_on_validation_map_and_restored():
    features, targets, mask = toy_data()
    train = FeatureSet(features, np.arange(48), targets, mask)
    val = FeatureSet(features, np.arange(48, 72), targets, mask)
    test = FeatureSet(features, np.arange(72, 96), targets, mask)
    net = toy_net(dropout=0.0)
    config = TrainConfig(k=1, lr=3e-2, epochs=6, batch_size=16, select="best")
    history = fit(net, train, test, config, val_set=val)
    assert all(list(row) == [*HISTORY, "val_loss", "val_map", "selected"] for row in history)
    best = max(history, key=lambda row: row["val_map"])
    assert [row["selected"] for row in history].count(1) == 1
    assert best["selected"] == 1
    # the network holds the selected epoch's weights: its validation mAP is that epoch's
    assert score(net, val, config, torch.device("cpu"))["map"] == pytest.approx(best["val_map"])


def test_select_best_without_validation_rows_is_refused():
    """Checked once, in params (fit trusts its config): one line naming train.select."""
    params = copy.deepcopy(dict(load_params(PROJECT / "params.yaml").raw))
    params["train"] = {**params["train"], "select": "best"}
    params["split"] = {**params["split"], "val_size": 0.0}
    with pytest.raises(FashionError) as error:
        validate(params)
    message = str(error.value)
    assert message.startswith("train.select: 'best' needs validation photos")
    assert "split.val_size" in message and "\n" not in message
    params["split"]["val_size"] = 0.2
    validate(params)  # with validation photos it is fine
