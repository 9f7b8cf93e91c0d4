"""The network trained on stored trunk features: VGG-16's trainable convs plus a two-layer head.

Heads (``model.head``), each ``-> dense(hidden) + ReLU + dropout -> dense(outputs)``:

``flatten``
    The paper's: the conv output flattened (25088 values at 224 px and ``frozen_convs`` 13).
``gap``
    Global average pooling of the conv output (512 values): far fewer weights, translation
    invariant (Lin et al., "Network in Network", 2014).
``multiscale``
    Global average and max of the conv output, concatenated with the trunk's side features
    (average and max of pool1..pool4, `fashiondvc.features`), batch-normalised: colour and
    texture from the early layers as well as parts from the last ones (hypercolumns, Hariharan
    et al. 2015).

Outputs are one logit per label, or, with label-space PCA (``train.label_pca`` > 0), the
coordinates of the label vector on its first principal components (`LabelPCA`), decoded back
to label scores. The network is saved with its whole config, as torchvision's reference
scripts save ``args`` with the weights, so anything that loads it rebuilds it alone.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fashiondvc.errors import FashionError

#: Keys a saved config must hold (older files without ``head`` load as ``flatten``).
CONFIG_KEYS = ("frozen_convs", "image_size", "hidden", "labels", "dropout")


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


class AttributeNet(nn.Module):
    """The trainable rest of VGG-16, a head (see the module docstring), and its outputs.

    Input: stored trunk features ``x`` of shape (n, C, H, W) and, for ``multiscale``, side
    features of shape (n, side_width); float32.
    """

    def __init__(self, trainable: nn.Sequential, in_shape: tuple[int, int, int], hidden: int,
                 n_labels: int, dropout: float = 0.5, *, head: str = "flatten",
                 side_width: int = 0, label_pca: LabelPCA | None = None):
        super().__init__()
        self.head, self.n_labels = head, n_labels
        self.side_width = side_width if head == "multiscale" else 0
        self.convs = trainable
        with torch.no_grad():
            conv_out = self.convs(torch.zeros(1, *in_shape))
        channels = conv_out.shape[1]
        width = {"flatten": conv_out.numel(), "gap": channels,
                 "multiscale": 2 * channels + side_width}.get(head)
        if width is None:
            raise FashionError(f"model.head: unknown head {head!r}")
        self.norm = nn.BatchNorm1d(width) if head == "multiscale" else nn.Identity()
        self.hidden = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True),
                                    nn.Dropout(dropout))
        self.label_pca = label_pca
        n_outputs = n_labels if label_pca is None else len(label_pca.components)
        self.out = nn.Linear(hidden, n_outputs)

    def pooled(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """The head's input vector, shape (n, width)."""
        x = self.convs(x)
        if self.head == "flatten":
            return x.flatten(1)
        if self.head == "gap":
            return x.mean(dim=(2, 3))
        parts = [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        if side is not None and side.shape[1]:
            parts.append(side)
        return self.norm(torch.cat(parts, dim=1))

    def embed(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """The hidden layer's activations, shape (n, hidden): an embedding for search."""
        return self.hidden(self.pooled(x, side))

    def forward(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs: logits (n, n_labels), or PCA coordinates (n, n_components)."""
        return self.out(self.embed(x, side))

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> label scores in [0, 1], shape (n, n_labels)."""
        if self.label_pca is None:
            return torch.sigmoid(outputs.float())
        return self.label_pca.decode(outputs.float())


def trainable_convs(weights: str, frozen_convs: int) -> nn.Sequential:
    """VGG-16's layers after the frozen cut, with ``weights``, trainable: `trunk.split_vgg`'s
    second part.

    From a weights file (or torchvision's cached ImageNet download) only the conv tensors are
    read, memory-mapped, and the trainable ones copied (`fashiondvc.vgg`): no torchvision
    import and no 138M-weight VGG-16 initialised first (2.4 s of a train stage's start on a
    2-core CPU). ``random`` and an ImageNet download still to be made take `fashiondvc.trunk`.
    """
    from fashiondvc.vgg import cut_index, frozen_part, weights_file

    path = weights_file(weights)
    if path is None:
        from fashiondvc.trunk import load_vgg16, split_vgg

        return split_vgg(load_vgg16(weights), frozen_convs)[1]
    every_conv = frozen_part(path, 13)  # checks the file; tensors mapped, not read
    trainable = nn.Sequential(*every_conv[cut_index(frozen_convs):])  # numbered from 0
    for module in trainable.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(param.detach().clone()))
    return trainable.train()


def build_net(weights: str, frozen_convs: int, image_size: int, hidden: int, n_labels: int,
              dropout: float, seed: int, *, head: str = "flatten", side_width: int = 0,
              label_pca: LabelPCA | None = None) -> AttributeNet:
    """The trainable network for features of ``frozen_convs`` at ``image_size``; head seeded."""
    from fashiondvc.vgg import feature_shape

    trainable = trainable_convs(weights, frozen_convs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AttributeNet(trainable, feature_shape(frozen_convs, image_size), hidden,
                            n_labels, dropout, head=head, side_width=side_width,
                            label_pca=label_pca)


def save_net(net: AttributeNet, path: str | os.PathLike, config: dict) -> None:
    """Save the trained network's weights with the config that rebuilds it (`load_net`)."""
    from fashiondvc.io import atomic_path

    config = {**config, "head": net.head, "side_width": net.side_width,
              "label_pca": 0 if net.label_pca is None else len(net.label_pca.components)}
    with atomic_path(path) as tmp:
        torch.save({"config": config, "state_dict": net.state_dict()}, tmp)


def load_net(path: str | os.PathLike) -> tuple[AttributeNet, dict]:
    """Rebuild a network saved by `save_net` (loaded with ``weights_only=True``).

    Returns the network in eval mode and its config (``labels``, ``image_size``, ``weights``,
    ``frozen_convs``, ``head``, ``hidden``, ``dropout``, ``side_width``, ``label_pca``, and the
    training settings it ran with).

    Raises
    ------
    FashionError
        If the file is missing, not a fashiondvc model, or its weights do not fit its config.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise FashionError(f"{path} does not exist: run the train stage first") from None
    except Exception as exc:
        raise FashionError(f"{path}: not a fashiondvc model file ({exc})") from None
    if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict)
            and isinstance(saved.get("state_dict"), dict)
            and all(key in saved["config"] for key in CONFIG_KEYS)):
        raise FashionError(f"{path}: not a fashiondvc model file (no config and state_dict)")
    config, state = saved["config"], saved["state_dict"]
    # torchvision-free and uninitialised: every weight comes from ``state`` (a query's load time)
    from fashiondvc.vgg import feature_shape, trainable_part

    trainable = trainable_part(config["frozen_convs"])
    n_labels = len(config["labels"])
    label_pca = None
    if config.get("label_pca"):
        label_pca = LabelPCA(torch.zeros(config["label_pca"], n_labels), torch.zeros(n_labels))
    try:
        net = AttributeNet(trainable, feature_shape(config["frozen_convs"], config["image_size"]),
                           config["hidden"], n_labels, config["dropout"],
                           head=config.get("head", "flatten"),
                           side_width=config.get("side_width", 0), label_pca=label_pca)
        net.load_state_dict(state)
    except (RuntimeError, FashionError) as exc:
        raise FashionError(f"{path}: weights do not match its config ({exc})") from None
    return net.eval(), config
