"""VGG-16's conv layers built without torchvision, only the part a caller needs, weights mapped.

A one-off search query needs the frozen trunk and the trained rest of the network, nothing
else. Through torchvision it would import ``torchvision.models`` (which pulls in
``torch._dynamo``, sympy and triton: 1.5-3 s on a 2-core CPU) and build a whole VGG-16 with
its 124M-weight classifier randomly initialised, twice, to keep a few conv layers. Here the
layers are built on the ``meta`` device (no memory, no initialisation) with torchvision's
``features`` numbering, then either given the weights of a state_dict file, memory-mapped
(`frozen_part`), or left for a ``load_state_dict`` (`trainable_part`).

`fashiondvc.trunk` stays the owner of weight checking and of the ``random`` and ``imagenet``
trunks; ``tests/test_vgg.py`` checks that every layer and cut here equals torchvision's.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from fashiondvc.errors import FashionError

#: torchvision's VGG-16 ``features`` configuration ("M" = 2x2 max-pool); `trunk` uses it too.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
             "M")
#: File name of torchvision's ImageNet VGG-16 weights in its cache (``$TORCH_HOME``).
IMAGENET_FILE = "vgg16-397923af.pth"


def features(device: str | torch.device = "meta") -> nn.Sequential:
    """The layers of torchvision's ``vgg16().features`` (31 modules), on ``device``.

    On ``meta`` (the default) nothing is allocated or initialised: load weights with
    ``load_state_dict(..., assign=True)`` or ``to_empty``.
    """
    layers: list[nn.Module] = []
    channels = 3
    with torch.device(device):
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1),
                           nn.ReLU(inplace=True)]
                channels = item
    return nn.Sequential(*layers)


def cut_index(frozen_convs: int) -> int:
    """Where the trainable part starts in ``features``: as `trunk.frozen_cut` (a pool right
    after the last frozen conv belongs to the frozen part)."""
    layers = features()
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
    if not 0 <= frozen_convs <= len(convs):
        raise FashionError(f"model.frozen_convs: must be in 0..{len(convs)}, got {frozen_convs}")
    if frozen_convs == 0:
        return 0
    cut = convs[frozen_convs - 1] + 2
    return cut + 1 if cut < len(layers) and isinstance(layers[cut], nn.MaxPool2d) else cut


def feature_shape(frozen_convs: int, image_size: int) -> tuple[int, int, int]:
    """Shape (C, H, W) the frozen part outputs for ``image_size`` x ``image_size`` inputs.

    As `trunk.feature_shape`: 3x3 convs with padding 1 keep the size, 2x2 pools halve it.
    """
    channels, size = 3, image_size
    for layer in features()[:cut_index(frozen_convs)]:
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            size //= 2
    return channels, size, size


def trainable_part(frozen_convs: int) -> nn.Sequential:
    """The layers after the frozen cut, allocated on the CPU but not initialised.

    For `net.load_net`, which loads every weight of them from the saved network. (Not
    ``to_empty``: on ``meta`` tensors it runs torch's Python reference ops, which import sympy.)
    """
    part = nn.Sequential(*features()[cut_index(frozen_convs):])
    for module in part.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype)))
    return part


def weights_file(weights: str) -> Path | None:
    """The state_dict file ``model.weights`` stands for, if it can be read without torchvision.

    A path to a file; for ``imagenet``, torchvision's cached download. None otherwise
    (``random``, or ``imagenet`` not downloaded yet): use `fashiondvc.trunk.load_vgg16`.
    """
    if weights == "random":
        return None
    if weights == "imagenet":
        from torch.hub import get_dir

        path = Path(get_dir()) / "checkpoints" / IMAGENET_FILE
    else:
        from fashiondvc.io import repo_path

        path = repo_path(weights)
    return path if path.is_file() else None


def frozen_part(path: str | os.PathLike, frozen_convs: int) -> nn.Sequential:
    """The frozen layers of VGG-16 with the weights of the state_dict file ``path``.

    Only the frozen convs' tensors are read, memory-mapped where the file format allows
    (``torch.load(weights_only=True)``: nothing in the file is executed); the part has no
    gradients and is in eval mode, as `trunk.split_vgg` returns it.

    Raises
    ------
    FashionError
        If the file is not a weights-only state_dict or lacks a frozen conv's tensor of the
        right shape.
    """
    part = nn.Sequential(*features()[:cut_index(frozen_convs)])
    state = _read(path)
    wanted = {}
    for key in part.state_dict():
        index, name = key.split(".", 1)
        full = f"features.{index}.{name}"
        if not isinstance(state, dict) or full not in state:
            raise FashionError(f"{path}: not a VGG-16 state_dict: missing key {full!r}")
        wanted[key] = state[full]
    try:
        part.load_state_dict(wanted, assign=True)
    except RuntimeError as exc:
        raise FashionError(f"{path}: not a VGG-16 state_dict ({str(exc).splitlines()[-1]})"
                           ) from None
    part.requires_grad_(False)
    return part.eval()


def _read(path: str | os.PathLike) -> object:
    """``torch.load(weights_only=True)``, memory-mapped when the file is in the zip format."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- pickle refusals, corrupt zips, bad magic
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    raise FashionError(f"{path}: not a weights-only state_dict, refused to load it ({reason})")
