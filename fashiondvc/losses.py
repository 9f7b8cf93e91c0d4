"""The training losses, one definition each, used for training and for every reported loss.

All take raw network outputs, targets and the observed-mask of shape (n, n_labels), ignore
missing labels, sum over an image's labels and average over images: the scale of the paper's
reported losses (about 6 for 11 labels at k = 2). ``pos_weight`` has shape (n_labels,).

``wbce``
    The paper's weighted binary cross-entropy: ``-(w y log p + (1 - y) log(1 - p))``.
``focal``
    Focal loss (Lin et al., "Focal Loss for Dense Object Detection", 2017) with the positive
    weight: ``-(w y (1 - p)^g log p + (1 - y) p^g log(1 - p))``.
``asl``
    Asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", 2021):
    positives as in ``wbce``; negatives focused with ``gamma`` and probability-shifted by
    `ASL_CLIP`: ``-(1 - y) q^g log(1 - q)``, ``q = max(p - 0.05, 0)``.

With label-space PCA the outputs are PCA coordinates and the loss is their squared error.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

#: Probability margin of the asymmetric loss (the paper's default).
ASL_CLIP = 0.05


def positive_weights(kind: str, k: float, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-label weight of positives, shape (n_labels,), float32.

    ``k``: ``k`` for every label (the paper). ``frequency``: negatives / positives among the
    observed training labels (the usual ``pos_weight`` of `torch.nn.BCEWithLogitsLoss`),
    clipped to [1, 100] so a label with a handful of positives cannot dominate.
    """
    if kind == "k":
        return np.full(targets.shape[1], k, dtype=np.float32)
    observed = mask.astype(bool)
    positives = (targets.astype(bool) & observed).sum(0)
    negatives = (~targets.astype(bool) & observed).sum(0)
    return np.clip(negatives / np.maximum(positives, 1), 1, 100).astype(np.float32)


def loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
         pos_weight: torch.Tensor, gamma: float = 2.0, label_pca=None) -> torch.Tensor:
    """The mean over images of the per-image loss ``kind`` (see the module docstring)."""
    n = max(len(outputs), 1)
    outputs = outputs.float()
    if label_pca is not None:
        return ((outputs - label_pca.encode(targets, mask)) ** 2).sum() / n
    pos_weight = pos_weight.to(outputs.device, outputs.dtype)
    if kind == "wbce":
        losses = F.binary_cross_entropy_with_logits(outputs, targets, pos_weight=pos_weight,
                                                    reduction="none")
    else:
        log_p, log_not_p = F.logsigmoid(outputs), F.logsigmoid(-outputs)
        p = torch.sigmoid(outputs)
        if kind == "focal":
            positive = (1 - p) ** gamma * log_p
            negative = p ** gamma * log_not_p
        elif kind == "asl":
            positive = log_p
            q = (p - ASL_CLIP).clamp(min=0)
            negative = q ** gamma * torch.log((1 - q).clamp(min=1e-8))
        else:
            raise ValueError(f"unknown loss {kind!r}")
        losses = -(pos_weight * targets * positive + (1 - targets) * negative)
    return (losses * mask).sum() / n


def batch_loss(net: torch.nn.Module, outputs: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
               config) -> torch.Tensor:
    """`loss` of a batch with a `fashiondvc.config.TrainConfig`'s loss, positive weights and
    gamma, and ``net``'s label coding (label-space PCA or not)."""
    return loss(config.loss, outputs, y, m, config.weights_for(y.shape[1]), config.gamma,
                getattr(net, "label_pca", None))
