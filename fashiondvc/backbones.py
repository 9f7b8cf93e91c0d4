"""The backbone seam: each pretrained network the project stands on, one `Backbone` entry each.

A backbone's *conv part* is an `nn.Sequential` of torchvision's layers (everything before its
classifier). A cut splits it into the **frozen part** (run once over every image by the featurize
stage, and on every query) and the **trainable rest** (trained with the head). Each entry names

- the layers of the conv part, by their names in torchvision's model (``modules``);
- its *units*, what the frozen-part knob counts, by where each one ends (``unit_ends``):
  ``model.frozen_convs`` counts VGG-16's 13 conv layers (the paper's "first 12 layers"),
  ``model.frozen_stages`` counts the other backbones' stages (stem, then four stages);
- its *taps*: the layers whose outputs, averaged and max-pooled over H and W, are the side
  features (every resolution level inside the frozen part, its output aside);
- its ImageNet weights in torchvision (``weights``) and their cached file name.

Weights (``model.weights``) are resolved here only: ``imagenet`` through torchvision's own
download (hash-checked) and cache (``$TORCH_HOME``), ``random`` seeded with `RANDOM_INIT_SEED`
(the same trunk in every stage), or a state_dict file (the whole model, or its conv part only).
Every file is loaded with ``torch.load(weights_only=True)``, memory-mapped: nothing in it is
executed, and only the tensors a part needs are read.

VGG-16 also has a torchvision-free builder of its layers (`vgg16_layers`): a one-off search
query then skips importing ``torchvision.models`` (1.5-3 s on a 2-core CPU). Adding a backbone
is one entry in `BACKBONES` here, its name in `fashiondvc.choices.BACKBONES`, and its test.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fashiondvc.errors import FashionError

#: Seed of ``model.weights: random`` (torchvision's own initialisation, seeded).
RANDOM_INIT_SEED = 0
#: torchvision's VGG-16 ``features`` configuration ("M" = 2x2 max-pool).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
             "M")


def vgg16_layers() -> nn.Sequential:
    """The layers of torchvision's ``vgg16().features`` (31 modules) on the ``meta`` device:
    nothing allocated or initialised, no torchvision import."""
    layers: list[nn.Module] = []
    channels = 3
    with torch.device("meta"):
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1),
                           nn.ReLU(inplace=True)]
                channels = item
    return nn.Sequential(*layers)


def _vgg16_unit_ends() -> tuple[int, ...]:
    """After conv k (1-based), the frozen part ends past its ReLU, and takes a directly
    following max-pool along: it has no weights and shrinks the stored features four times."""
    cfg = [layer for item in VGG16_CFG for layer in (("M",) if item == "M" else ("C", "R"))]
    ends = []
    for i, kind in enumerate(cfg):
        if kind == "C":
            end = i + 2
            ends.append(end + 1 if end < len(cfg) and cfg[end] == "M" else end)
    return tuple(ends)


@dataclass(frozen=True)
class Backbone:
    """One network: its conv part, units, taps and weights (see the module docstring)."""

    name: str
    builder: str                       # torchvision.models function
    weights: str                       # torchvision weights enum member, "Enum.MEMBER"
    imagenet_file: str                 # that member's file name in torchvision's cache
    modules: tuple[str, ...]           # the conv part's layers, by name in the model
    unit_ends: tuple[int, ...]         # unit k frozen: the frozen part is layers[:unit_ends[k-1]]
    taps: tuple[int, ...]              # layers whose outputs give the side features
    skeleton: Callable[[], nn.Sequential] | None = None  # torchvision-free meta builder

    @property
    def units(self) -> int:
        return len(self.unit_ends)

    def cut(self, frozen: int) -> int:
        """Index in the conv part where the trainable rest starts, for ``frozen`` units
        (0..`units`, validated by `fashiondvc.params`)."""
        return self.unit_ends[frozen - 1] if frozen else 0

    def torchvision_model(self, device: str | None = None) -> nn.Module:
        """torchvision's model, randomly initialised (on ``meta``: not initialised at all)."""
        import torchvision.models

        builder = getattr(torchvision.models, self.builder)
        with torch.device(device) if device else contextlib.nullcontext():
            return builder(weights=None)

    def layers_of(self, model: nn.Module) -> nn.Sequential:
        """The conv part of a torchvision ``model`` (its modules, shared, not copied)."""
        return nn.Sequential(*(model.get_submodule(name) for name in self.modules))

    def meta_layers(self) -> nn.Sequential:
        """The conv part on the ``meta`` device (no weights), numbered as `layers_of`."""
        if self.skeleton is not None:
            return self.skeleton()
        return self.layers_of(self.torchvision_model("meta"))


_VGG_MODULES = tuple(f"features.{i}" for i in range(31))

#: Every backbone, by ``model.backbone``.
BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        "vgg16", "vgg16", "VGG16_Weights.IMAGENET1K_V1", "vgg16-397923af.pth", _VGG_MODULES,
        _vgg16_unit_ends(), taps=(4, 9, 16, 23, 30), skeleton=vgg16_layers),
    "resnet50": Backbone(
        "resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth",
        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
        unit_ends=(4, 5, 6, 7, 8), taps=(3, 4, 5, 6, 7)),
    "convnext_tiny": Backbone(
        "convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        "convnext_tiny-983f1562.pth", tuple(f"features.{i}" for i in range(8)),
        unit_ends=(1, 2, 4, 6, 8), taps=(1, 3, 5, 7)),
}


def get(name: str) -> Backbone:
    """The `Backbone` called ``name`` (``model.backbone``)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise FashionError(f"model.backbone: unknown backbone {name!r}; known: "
                           f"{', '.join(BACKBONES)}") from None


class FrozenPart(nn.Sequential):
    """The frozen layers, in eval mode without gradients; knows its side-feature taps."""

    def __init__(self, layers: list[nn.Module], taps: tuple[int, ...]):
        super().__init__(*layers)
        # a tap on the part's last layer is its output, not a side feature
        self.taps = tuple(i for i in taps if i < len(layers) - 1)
        self.requires_grad_(False)
        self.eval()

    def forward_with_side(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, side)``: side is, per tap in layer order, the global average then the
        global max over H, W, float32 of shape ``(n, 2 * sum(tap channels))``."""
        side = []
        for i, layer in enumerate(self):
            x = layer(x)
            if i in self.taps:
                side += [x.float().mean(dim=(2, 3)), x.float().amax(dim=(2, 3))]
        return x, (torch.cat(side, dim=1) if side else torch.zeros(len(x), 0))

    def __getitem__(self, index):
        if isinstance(index, slice):  # a slice is plain layers (taps name positions in self)
            return nn.Sequential(*list(self)[index])
        return super().__getitem__(index)

    def train(self, mode: bool = True) -> FrozenPart:
        return super().train(False)  # frozen means eval: batch norm keeps its running stats


# --------------------------------------------------------------------------- weights


def weights_file(backbone: Backbone, weights: str) -> Path | None:
    """The state_dict file ``model.weights`` stands for, if there is one on disk.

    A path (relative ones from the repository, `fashiondvc.io.repo_path`); for ``imagenet``,
    torchvision's cached download once it exists. None for ``random`` or an ImageNet download
    still to be made.
    """
    if weights == "random":
        return None
    if weights == "imagenet":
        from torch.hub import get_dir

        path = Path(get_dir()) / "checkpoints" / backbone.imagenet_file
    else:
        from fashiondvc.io import repo_path

        path = repo_path(weights)
    return path if path.is_file() else None


def read_weights(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)``, memory-mapped where the file format allows.

    Raises
    ------
    FashionError
        If the file is not a weights-only state_dict (it would run code, is corrupt or is not a
        torch file), naming the file.
    """
    with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise beside the refusal
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # legacy (non-zip) files cannot be mmap-ed
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- pickle refusals, corrupt zips, bad magic
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            # torch's refusal (an UnpicklingError; for a torch.save zip its first line is
            # "Weights only load failed. ..." with terminal escapes, naming no weights_only)
            if isinstance(exc, pickle.UnpicklingError) or "weights_only" in reason or (
                    "Unsupported global" in reason):
                reason = "it holds pickled objects other than tensors, which could run code"
    raise FashionError(f"{path}: not a weights-only state_dict, refused to load it ({reason})")


def _imagenet_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    import torchvision.models

    enum, member = backbone.weights.split(".")
    try:  # torchvision's builders would unpickle the cached file unrestricted
        return getattr(getattr(torchvision.models, enum), member).get_state_dict(
            progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # no network, bad hash, or a cache file that is not weights
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise FashionError(f"model.weights: cannot fetch ImageNet weights for "
                           f"{backbone.name} ({reason})") from None


def _fill(backbone: Backbone, layers: nn.Sequential, start: int, state: object, source: str
          ) -> nn.Sequential:
    """Give ``layers`` (the conv part's layers from index ``start`` on) the tensors of
    ``state``, a torchvision state_dict, in place; check names and shapes."""
    prefix = f"{source}: not a {backbone.name} state_dict:"
    if not isinstance(state, dict):
        raise FashionError(f"{source}: expected a state_dict, got {type(state).__name__}")
    wanted = {}
    for key, value in layers.state_dict(keep_vars=True).items():
        index, rest = key.split(".", 1)
        full = f"{backbone.modules[start + int(index)]}.{rest}"
        if full not in state:
            raise FashionError(f"{prefix} missing key {full!r}")
        tensor = state[full]
        if not isinstance(tensor, torch.Tensor):
            raise FashionError(f"{prefix} {full!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(value.shape):
            raise FashionError(f"{prefix} {full!r} has shape {tuple(tensor.shape)}, "
                               f"expected {tuple(value.shape)}")
        wanted[key] = tensor
    layers.load_state_dict(wanted, assign=True)
    return layers


def _part(backbone: Backbone, weights: str, start: int, stop: int | None) -> nn.Sequential:
    """Layers ``start:stop`` of the conv part with ``weights``, on the CPU (maybe mmap-ed)."""
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = backbone.torchvision_model()
        return nn.Sequential(*list(backbone.layers_of(model))[start:stop])
    path = weights_file(backbone, weights)
    if path is None and weights != "imagenet":
        raise FashionError(f"model.weights: {weights!r} is neither 'imagenet', 'random' nor an "
                           "existing file")
    state = _imagenet_state(backbone) if path is None else read_weights(path)
    source = "model.weights (ImageNet)" if path is None else str(path)
    layers = nn.Sequential(*list(backbone.meta_layers())[start:stop])
    return _fill(backbone, layers, start, state, source)


def frozen_part(backbone: Backbone, weights: str, frozen: int) -> FrozenPart:
    """The first ``frozen`` units with ``weights``, frozen (eval mode, no gradients).

    From a file, only the frozen tensors are read, memory-mapped.

    Raises
    ------
    FashionError
        If ``weights`` cannot be had or do not fit the backbone, naming the file or key.
    """
    part = _part(backbone, weights, 0, backbone.cut(frozen))
    return FrozenPart(list(part), backbone.taps)


def trainable_part(backbone: Backbone, weights: str, frozen: int) -> nn.Sequential:
    """The layers after the first ``frozen`` units with ``weights``, copied, trainable."""
    part = _part(backbone, weights, backbone.cut(frozen), None)
    for module in part.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(param.detach().clone()))
        for name, buffer in list(module.named_buffers(recurse=False)):
            setattr(module, name, buffer.detach().clone())
    return nn.Sequential(*part).train()


def empty_part(backbone: Backbone, frozen: int, *, trainable: bool) -> nn.Sequential:
    """The frozen part (or, with ``trainable``, the rest), allocated on the CPU but not
    initialised: for loading a saved state_dict into it (`fashiondvc.net.load_net`, the logged
    MLflow model). (Not ``to_empty``: on ``meta`` tensors it runs torch's Python reference ops,
    which import sympy.)"""
    cut = backbone.cut(frozen)
    layers = list(backbone.meta_layers())
    part = nn.Sequential(*(layers[cut:] if trainable else layers[:cut]))
    for module in part.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                               requires_grad=param.requires_grad))
        for name, buffer in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.empty(buffer.shape, dtype=buffer.dtype))
    return part if trainable else FrozenPart(list(part), backbone.taps)


def weights_identity(backbone: Backbone, weights: str) -> dict:
    """What identifies ``weights`` without loading them, wherever they lie: ImageNet's file
    name (torchvision names it by hash), the random seed, or a file's sha256."""
    if weights == "imagenet":
        return {"imagenet": backbone.imagenet_file}
    if weights == "random":
        return {"random": RANDOM_INIT_SEED}
    from fashiondvc.io import repo_path, sha256_file

    return {"sha256": sha256_file(repo_path(weights))}
