"""The losses against hand computations, and per-label positive weights."""

import math

import numpy as np
import pytest
import torch

from fashiondvc.losses import ASL_CLIP, loss, positive_weights
from fashiondvc.net import LabelPCA

LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
TARGETS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
MASK = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # image 2, label 1 is missing


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_weighted_bce_matches_hand_computation():
    k = 3.0
    by_hand = (-k * math.log(sig(0.0))        # positive, weight k
               - math.log(1 - sig(2.0))       # negative
               - k * math.log(sig(0.5))) / 2  # positive; the masked entry adds nothing
    value = loss("wbce", LOGITS, TARGETS, MASK, torch.full((2,), k))
    assert value.item() == pytest.approx(by_hand, rel=1e-6)


def test_per_label_weights_apply_per_column():
    w = torch.tensor([2.0, 5.0])
    by_hand = (-2 * math.log(sig(0.0)) - math.log(1 - sig(2.0)) - 5 * math.log(sig(0.5))) / 2
    assert loss("wbce", LOGITS, TARGETS, MASK, w).item() == pytest.approx(by_hand, rel=1e-6)


def test_focal_matches_hand_computation():
    g, k = 2.0, 1.0
    p0, p1, p3 = sig(0.0), sig(2.0), sig(0.5)
    by_hand = (-(1 - p0) ** g * math.log(p0) - p1 ** g * math.log(1 - p1)
               - (1 - p3) ** g * math.log(p3)) / 2
    value = loss("focal", LOGITS, TARGETS, MASK, torch.full((2,), k), gamma=g)
    assert value.item() == pytest.approx(by_hand, rel=1e-5)


def test_asymmetric_loss_shifts_and_focuses_negatives_only():
    g = 4.0
    q = max(sig(2.0) - ASL_CLIP, 0)
    by_hand = (-math.log(sig(0.0)) - q ** g * math.log(1 - q) - math.log(sig(0.5))) / 2
    value = loss("asl", LOGITS, TARGETS, MASK, torch.ones(2), gamma=g)
    assert value.item() == pytest.approx(by_hand, rel=1e-5)


def test_frequency_weights_are_negatives_over_positives():
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], dtype=bool)
    # label 0: 1 positive, 2 observed negatives -> 2; label 1: 1 positive, 3 negatives -> 3
    np.testing.assert_allclose(positive_weights("frequency", 9, targets, mask), [2, 3])
    np.testing.assert_allclose(positive_weights("k", 9, targets, mask), [9, 9])


def test_label_pca_round_trips_and_its_loss_is_the_squared_error():
    rng = np.random.default_rng(0)
    labels = (rng.random((50, 4)) < 0.4).astype(np.float32)
    mask = np.ones_like(labels, dtype=bool)
    pca = LabelPCA.fit(labels, mask, 4)  # all components: exact reconstruction
    y = torch.from_numpy(labels)
    coords = pca.encode(y, torch.ones_like(y))
    np.testing.assert_allclose(pca.decode(coords).numpy(), labels, atol=1e-5)
    outputs = coords + 0.5
    value = loss("wbce", outputs, y, torch.ones_like(y), torch.ones(4), label_pca=pca)
    assert value.item() == pytest.approx(0.25 * 4, rel=1e-5)  # (0.5^2) x 4 components per image


def test_batch_loss_takes_loss_weights_and_gamma_from_the_train_config():
    """`batch_loss`: the loss every training step and reported loss computes."""
    from types import SimpleNamespace

    from fashiondvc.config import TrainConfig
    from fashiondvc.losses import batch_loss

    plain = SimpleNamespace(label_pca=None)
    config = TrainConfig(k=3, lr=1e-3, epochs=1, batch_size=2)
    expected = loss("wbce", LOGITS, TARGETS, MASK, torch.full((2,), 3.0))
    assert batch_loss(plain, LOGITS, TARGETS, MASK, config).item() == pytest.approx(
        expected.item(), rel=1e-6)
    per_label = TrainConfig(k=3, lr=1e-3, epochs=1, batch_size=2, pos_weight=(2.0, 5.0))
    by_hand = (-2 * math.log(sig(0.0)) - math.log(1 - sig(2.0)) - 5 * math.log(sig(0.5))) / 2
    assert batch_loss(plain, LOGITS, TARGETS, MASK, per_label).item() == pytest.approx(
        by_hand, rel=1e-6)
    focal = TrainConfig(k=1, lr=1e-3, epochs=1, batch_size=2, loss="focal", gamma=3.0)
    assert batch_loss(plain, LOGITS, TARGETS, MASK, focal).item() == pytest.approx(
        loss("focal", LOGITS, TARGETS, MASK, torch.ones(2), gamma=3.0).item(), rel=1e-6)
    assert loss("focal", LOGITS, TARGETS, MASK, torch.ones(2), gamma=3.0).item() != (
        pytest.approx(loss("focal", LOGITS, TARGETS, MASK, torch.ones(2), gamma=2.0).item()))
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pca = LabelPCA.fit(labels.numpy(), np.ones((3, 2), dtype=bool), 2)
    coords = pca.encode(labels, torch.ones_like(labels)) + 0.5
    with_pca = SimpleNamespace(label_pca=pca)
    assert batch_loss(with_pca, coords, labels, torch.ones_like(labels), config).item() == (
        pytest.approx(0.25 * 2, rel=1e-5))
