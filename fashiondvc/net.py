"""The network trained on stored features: the backbone's trainable rest plus a two-layer head.

The network takes named features (`fashiondvc.features.FEATURE_KINDS`, chosen by
``model.inputs``): ``trunk`` goes through the backbone's trainable layers and is pooled by the
head; every other input (``side``, ``colour``) is a vector concatenated beside it. Heads
(``model.head``), each ``-> dense(hidden) + ReLU + dropout -> dense(outputs)``:

``flatten``
    The paper's: the conv output flattened (25088 values at 224 px and ``frozen_convs`` 13).
``gap``
    Global average pooling of the conv output (512 values): far fewer weights, translation
    invariant (Lin et al., "Network in Network", 2014).
``multiscale``
    Global average and max of the conv output, batch-normalised together with the vector
    inputs: with ``side`` (average and max of pool1..pool4) colour and texture from the early
    layers as well as parts from the last ones (hypercolumns, Hariharan et al. 2015).
``regions``
    ``multiscale`` plus the conv output averaged over regions where clothes are: three
    horizontal bands (head and shoulders, torso, legs), four quadrants, and a centred Gaussian
    prior (sigma a quarter of the map), since each photo shows one person, usually centred.
    Region pooling as in Gong et al., "Multi-scale orderless pooling of deep convolutional
    activation features" (ECCV 2014) and the spatial pyramid of He et al. (SPP-net, 2014).

With vector inputs beside the trunk, every head batch-normalises the concatenation (their
scales differ by orders of magnitude).

Outputs are one logit per label, or, with label-space PCA (``train.label_pca`` > 0), the
coordinates of the label vector on its first principal components (`LabelPCA`), decoded back
to label scores. The network is saved with its whole config (`ModelConfig`, versioned), as
torchvision's reference scripts save ``args`` with the weights, so anything that loads it
rebuilds it alone.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fashiondvc import backbones
from fashiondvc.config import ModelConfig
from fashiondvc.errors import FashionError, describe


class LabelPCA(nn.Module):
    """Label-space PCA: ``encode`` a label matrix to components, ``decode`` back to scores.

    Fitted on the training labels with missing values replaced by the label's mean (the paper's
    "future work"; Tai & Lin, "Multilabel classification with principal label space
    transformation", 2012).

    Parameters
    ----------
    components : tensor of shape (n_components, n_labels)
    mean : tensor of shape (n_labels,)
    """

    def __init__(self, components: torch.Tensor, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("components", components.float())
        self.register_buffer("mean", mean.float())

    @classmethod
    def fit(cls, targets, mask, n_components: int) -> LabelPCA:
        """PCA of ``targets`` (n, n_labels) float with ``mask`` (n, n_labels) bool observed."""
        y = torch.as_tensor(targets, dtype=torch.float64)
        m = torch.as_tensor(mask, dtype=torch.bool)
        mean = (y * m).sum(0) / m.sum(0).clamp(min=1)
        filled = torch.where(m, y, mean)
        _, _, vh = torch.linalg.svd(filled - mean, full_matrices=False)
        return cls(vh[:n_components], mean)

    def encode(self, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, n_labels) labels, missing ones at the mean -> (n, n_components)."""
        filled = torch.where(mask.bool(), labels, self.mean)
        return (filled - self.mean) @ self.components.T

    def decode(self, coords: torch.Tensor) -> torch.Tensor:
        """(n, n_components) -> (n, n_labels) label scores, clipped to [0, 1]."""
        return (coords @ self.components + self.mean).clamp(0, 1)


#: Grids (rows, columns) the ``regions`` head averages over: bands, then quadrants.
REGION_GRIDS = ((3, 1), (2, 2))


def centre_prior(height: int, width: int, sigma: float = 0.25) -> torch.Tensor:
    """A centred Gaussian over a (height, width) map, sigma a fraction of each side; sums to 1."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height - 0.5
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width - 0.5
    weights = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))
    return weights / weights.sum()


class AttributeNet(nn.Module):
    """The backbone's trainable rest, a head (see the module docstring), and its outputs.

    ``forward``, ``embed`` and ``pooled`` take the named features ``{name: tensor}`` of
    ``input_shapes`` (float32, shape ``(n, *shape)``).
    """

    def __init__(self, trainable: nn.Sequential, input_shapes: Mapping[str, tuple[int, ...]],
                 hidden: int, n_labels: int, dropout: float = 0.5, *, head: str = "flatten",
                 label_pca: LabelPCA | None = None):
        super().__init__()
        self.head, self.n_labels = head, n_labels
        self.input_shapes = dict(input_shapes)
        self.convs = trainable
        with torch.no_grad():
            conv_out = self.convs.eval()(torch.zeros(1, *self.input_shapes["trunk"]))
        self.convs.train()
        channels = conv_out.shape[1]
        regions = 2 + sum(rows * cols for rows, cols in REGION_GRIDS) + 1  # + max, centre
        width = {"flatten": conv_out.numel(), "gap": channels, "multiscale": 2 * channels,
                 "regions": regions * channels}[head]
        if head == "regions":
            self.register_buffer("centre", centre_prior(*conv_out.shape[2:]), persistent=False)
        vectors = [name for name in self.input_shapes if name != "trunk"]
        width += sum(int(np.prod(self.input_shapes[name])) for name in vectors)
        self.vectors = tuple(vectors)
        self.norm = (nn.BatchNorm1d(width) if head in ("multiscale", "regions") or vectors
                     else nn.Identity())
        self.hidden = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True),
                                    nn.Dropout(dropout))
        self.label_pca = label_pca
        n_outputs = n_labels if label_pca is None else len(label_pca.components)
        self.out = nn.Linear(hidden, n_outputs)

    def pooled(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The head's input vector, shape (n, width)."""
        x = self.convs(features["trunk"])
        if self.head == "flatten":
            parts = [x.flatten(1)]
        elif self.head == "gap":
            parts = [x.mean(dim=(2, 3))]
        else:
            parts = [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        if self.head == "regions":
            parts += [nn.functional.adaptive_avg_pool2d(x, grid).flatten(1)
                      for grid in REGION_GRIDS]
            parts.append((x * self.centre.to(x.dtype)).sum(dim=(2, 3)))
        parts += [features[name].flatten(1) for name in self.vectors]
        return self.norm(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def embed(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The hidden layer's activations, shape (n, hidden): an embedding for search."""
        return self.hidden(self.pooled(features))

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw outputs: logits (n, n_labels), or PCA coordinates (n, n_components)."""
        return self.out(self.embed(features))

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> label scores in [0, 1], shape (n, n_labels)."""
        if self.label_pca is None:
            return torch.sigmoid(outputs.float())
        return self.label_pca.decode(outputs.float())


def build_net(config: ModelConfig, seed: int, label_pca: LabelPCA | None = None
              ) -> AttributeNet:
    """The trainable network ``config`` describes, the backbone's rest with its weights (only
    the needed tensors read, memory-mapped, and copied: `backbones.trainable_part`), the head
    initialised with ``seed``."""
    ex = config.extractor
    trainable = backbones.trainable_part(backbones.get(ex.backbone), ex.weights, ex.frozen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AttributeNet(trainable, config.input_shapes, config.hidden, len(config.labels),
                            config.dropout, head=config.head, label_pca=label_pca)


def save_net(net: AttributeNet, path: str | os.PathLike, config: ModelConfig,
             int8_trunk: dict[str, bytes] | None = None) -> None:
    """Save the trained network's weights with the config that rebuilds it (`load_net`).

    ``int8_trunk`` is the quantized frozen part the features came from
    (`fashiondvc.features.StoredFeatures.int8_files`): saved with the network, so every query
    path runs the same bytes.
    """
    from fashiondvc.io import atomic_path

    saved = {"config": config.to_dict(), "state_dict": net.state_dict()}
    if int8_trunk is not None:
        saved["int8_trunk"] = {suffix: torch.frombuffer(bytearray(data), dtype=torch.uint8)
                               for suffix, data in int8_trunk.items()}
    with atomic_path(path) as tmp:
        torch.save(saved, tmp)


def load_net(path: str | os.PathLike) -> tuple[AttributeNet, ModelConfig]:
    """Rebuild a network saved by `save_net` (loaded with ``weights_only=True``).

    Returns the network in eval mode and its `ModelConfig`; ``net.int8_trunk`` holds the
    int8 frozen part's files for an int8 model (`save_net`), else None. Nothing is initialised: the
    backbone's trainable layers are allocated empty and filled from the file (a query's load
    time).

    Raises
    ------
    FashionError
        If the file is missing, not a fashiondvc model (or of an older version), or its
        weights do not fit its config.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise FashionError(f"{path} does not exist: run the train stage first") from None
    except pickle.UnpicklingError:  # torch's weights_only refusal: it would run code
        raise FashionError(f"{path}: not a fashiondvc model file (not weights-only: it could "
                           "run code when loaded, refused)") from None
    except Exception as exc:  # truncated (a partial dvc pull, a full disk), or another file
        raise FashionError(f"{path}: not a fashiondvc model file, or a cut one "
                           f"({describe(exc)}); rerun the train stage (or dvc pull it "
                           "again)") from None
    if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict)
            and isinstance(saved.get("state_dict"), dict)):
        raise FashionError(f"{path}: not a fashiondvc model file (no config and state_dict)")
    try:
        config = ModelConfig.from_dict(saved["config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise FashionError(f"{path}: {exc}") from None
    ex = config.extractor
    trainable = backbones.empty_part(backbones.get(ex.backbone), ex.frozen, trainable=True)
    n_labels = len(config.labels)
    label_pca = None
    if config.label_pca:
        label_pca = LabelPCA(torch.zeros(config.label_pca, n_labels), torch.zeros(n_labels))
    try:
        net = AttributeNet(trainable, config.input_shapes, config.hidden, n_labels,
                           config.dropout, head=config.head, label_pca=label_pca)
        net.load_state_dict(saved["state_dict"])
    except (RuntimeError, FashionError) as exc:
        raise FashionError(f"{path}: weights do not match its config ({exc})") from None
    net.int8_trunk = None
    if config.extractor.precision == "int8":
        stored = saved.get("int8_trunk")
        if not (isinstance(stored, dict) and {"xml", "bin"} <= stored.keys()):
            raise FashionError(f"{path}: an int8 model without its int8 trunk; rerun train")
        net.int8_trunk = {suffix: stored[suffix].numpy().tobytes() for suffix in ("xml", "bin")}
    return net.eval(), config
