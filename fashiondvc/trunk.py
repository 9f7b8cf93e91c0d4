"""VGG-16's conv layers: safe weight loading, and the cut into a frozen trunk + trainable rest.

"The first 12 layers are fixed": we read layers as VGG-16's 13 conv layers, so
``frozen_convs=12`` freezes conv1_1 .. conv5_2 and trains conv5_3 with the head. (Keras's
``vgg.layers[:12]``, counting the input and pooling layers, would freeze only 8 convs:
``frozen_convs=8``.)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings

import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from fashiondvc.choices import N_CONVS
from fashiondvc.errors import FashionError
from fashiondvc.io import repo_path
from fashiondvc.vgg import VGG16_CFG

RANDOM_INIT_SEED = 0


def conv_positions(features: nn.Sequential) -> list[int]:
    """Indices of the conv layers inside ``vgg.features``."""
    return [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]


def frozen_cut(features: nn.Sequential, frozen_convs: int) -> int:
    """Index in ``features`` where the trainable part starts.

    The frozen part ends after the ReLU of the last frozen conv, and takes a directly following
    max-pool along: it has no parameters and shrinks the stored features four times.
    """
    if not 0 <= frozen_convs <= N_CONVS:
        raise FashionError(f"model.frozen_convs: must be in 0..{N_CONVS}, got {frozen_convs}")
    if frozen_convs == 0:
        return 0
    cut = conv_positions(features)[frozen_convs - 1] + 2  # past the conv and its ReLU
    if cut < len(features) and isinstance(features[cut], nn.MaxPool2d):
        cut += 1
    return cut


def load_vgg16(weights: str) -> nn.Module:
    """VGG-16 with ``weights``: ``imagenet``, ``random`` or a path to a state_dict file.

    ``imagenet`` goes through torchvision's own download (hash-checked) and cache
    (``$TORCH_HOME``). ``random`` is seeded, so the frozen trunk is the same in every stage. A
    file may hold a full VGG-16 state_dict or only its ``features.*`` entries. Every file,
    the cached ImageNet one included, is loaded with ``weights_only=True``: nothing it holds
    is executed.
    """
    if weights == "imagenet":
        try:  # torchvision's vgg16(weights=...) would unpickle the cached file unrestricted
            state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True,
                                                                weights_only=True)
        except Exception as exc:  # no network, bad hash, or a cache file that is not weights
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise FashionError(f"model.weights: cannot fetch ImageNet weights ({reason})"
                               ) from None
        model = vgg16(weights=None, init_weights=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise FashionError(f"model.weights: the cached ImageNet weights are not VGG-16 "
                               f"({str(exc).splitlines()[0]})") from None
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = vgg16(weights=None)
    if weights == "random":
        return model
    path = repo_path(weights)
    if not path.is_file():
        raise FashionError(
            f"model.weights: {weights!r} is neither 'imagenet', 'random' nor an existing file"
        )
    load_state_file(model, path)
    return model


def vgg16_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of a torchvision VGG-16 state_dict with its shape (built on the meta device)."""
    with torch.device("meta"):
        model = vgg16(weights=None)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def read_weights(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)``, memory-mapped where the file format allows.

    Only tensors and plain containers are unpickled: a file that would run code is refused.
    """
    with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise beside the refusal
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # legacy (non-zip) files cannot be mmap-ed
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            reason = "it holds pickled objects other than tensors, which could run code"
        except Exception as exc:  # corrupt zips, bad magic, truncated files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    raise FashionError(f"{path}: not a weights-only state_dict, refused to load it ({reason})")


def check_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a VGG-16 state_dict file (full or ``features.*`` only) safely and check it.

    Returns
    -------
    dict
        The state_dict (memory-mapped where possible).

    Raises
    ------
    FashionError
        If the file is not a weights-only state_dict, or naming the first key that does not
        match VGG-16: missing, not a tensor, of another shape, or unexpected.
    """
    state = read_weights(path)
    if not isinstance(state, dict):
        raise FashionError(f"{path}: expected a state_dict, got {type(state).__name__}")
    prefix = f"{path}: not a VGG-16 state_dict:"
    expected = vgg16_shapes()
    for key, shape in expected.items():
        if key not in state:
            if key.startswith("features."):
                raise FashionError(f"{prefix} missing key {key!r}")
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise FashionError(f"{prefix} {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != shape:
            raise FashionError(f"{prefix} {key!r} has shape {tuple(value.shape)}, "
                               f"expected {shape}")
    for key in state:
        if key not in expected:
            raise FashionError(f"{prefix} unexpected key {key!r}")
    return state


def load_state_file(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a VGG-16 state_dict file (full or ``features.*`` only) safely into ``model``."""
    model.load_state_dict(check_state_file(path), strict=False)


def split_vgg(model: nn.Module, frozen_convs: int) -> tuple[nn.Sequential, nn.Sequential]:
    """``(frozen, trainable)`` parts of ``model.features``; the frozen part has no gradients."""
    features = model.features
    cut = frozen_cut(features, frozen_convs)
    frozen = nn.Sequential(*features[:cut]).eval()
    frozen.requires_grad_(False)
    trainable = nn.Sequential(*features[cut:])
    return frozen, trainable


def feature_shape(frozen_convs: int, image_size: int) -> tuple[int, int, int]:
    """Shape (C, H, W) the frozen part outputs for ``image_size`` x ``image_size`` inputs."""
    channels, size, convs = 3, image_size, 0
    for layer in VGG16_CFG if frozen_convs else ():
        if layer == "M":
            size //= 2  # a pool right after the last frozen conv belongs to the trunk too
            if convs == frozen_convs:
                break
        elif convs == frozen_convs:
            break
        else:
            channels, convs = layer, convs + 1
    return channels, size, size
