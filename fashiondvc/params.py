"""Reading ``params.yaml`` and validating it against one table of constraints, before any work.

`CONSTRAINTS` lists every parameter the pipeline reads with what it accepts (the model is
scikit-learn's ``_parameter_constraints``); `validate` checks them all once, with the few rules
that join two parameters, and names the first bad one. Library functions trust their inputs.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from fashiondvc.choices import (
    BACKBONES,
    EMBEDDINGS,
    FEATURE_KINDS,
    FEATURIZE_PRECISIONS,
    HEADS,
    LOSSES,
    N_CONVS,
    OPTIMIZERS,
    POS_WEIGHTS,
    PRECISIONS,
    SELECTIONS,
    THRESHOLDS,
    TTAS,
    WEIGHT_CHOICES,
)
from fashiondvc.errors import FashionError
from fashiondvc.labels import resolve_label_set

__all__ = ["CONSTRAINTS", "Params", "flatten", "load_params", "override", "validate"]


@dataclass(frozen=True)
class Number:
    """A real (or, with ``integer``, whole) number in ``[low, high]``; ``open_*`` excludes ends."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.integer and not isinstance(value, int)):
            return f"expected {'an integer' if self.integer else 'a number'}, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        low_bad = self.low is not None and (value <= self.low if self.open_low
                                            else value < self.low)
        high_bad = self.high is not None and (value >= self.high if self.open_high
                                              else value > self.high)
        if low_bad or high_bad:
            lo = "(-inf" if self.low is None else f"{'(' if self.open_low else '['}{self.low:g}"
            hi = "inf)" if self.high is None else f"{self.high:g}{')' if self.open_high else ']'}"
            return f"must be in {lo}, {hi}, got {value}"
        return None


def Integer(low: int | None = None, high: int | None = None) -> Number:  # noqa: N802
    """A whole number in ``[low, high]``."""
    return Number(low, high, integer=True)


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    choices: tuple

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) != isinstance(self.choices[0], bool) or (
                value not in self.choices):
            return f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
        return None


@dataclass(frozen=True)
class Text:
    """A non-empty string; ``optional`` allows null; ``pattern`` must match it whole."""

    optional: bool = False
    pattern: str | None = None
    meaning: str = "a non-empty string"

    def check(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value or (
                self.pattern and not re.fullmatch(self.pattern, value)):
            return f"expected {self.meaning}{' or null' if self.optional else ''}, got {value!r}"
        return None


@dataclass(frozen=True)
class Check:
    """A function that raises `FashionError` for a bad value."""

    function: Callable[[Any], Any]

    def check(self, value: Any) -> str | None:
        try:
            self.function(value)
        except FashionError as exc:
            return str(exc)
        return None


@dataclass(frozen=True)
class Names:
    """A non-empty list of distinct names from ``choices``; ``required`` must be among them."""

    choices: tuple
    required: tuple = ()

    def check(self, value: Any) -> str | None:
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(v, str) for v in value)):
            return f"expected a list of names from {', '.join(self.choices)}, got {value!r}"
        unknown = [v for v in value if v not in self.choices]
        if unknown:
            return f"unknown name {unknown[0]!r}; known: {', '.join(self.choices)}"
        if len(set(value)) != len(value):
            return f"names repeat in {list(value)}"
        missing = [r for r in self.required if r not in value]
        if missing:
            return f"must include {missing[0]!r}, got {list(value)}"
        return None


def _weights(value: Any) -> None:
    """``imagenet``, ``random`` or an existing file (whose tensors the backbone checks)."""
    from fashiondvc.io import repo_path

    if not isinstance(value, str) or not value:
        raise FashionError(f"model.weights: expected 'imagenet', 'random' or a path, "
                           f"got {value!r}")
    if value not in WEIGHT_CHOICES and not repo_path(value).is_file():
        raise FashionError(f"model.weights: {value!r} is neither 'imagenet', 'random' nor an "
                           "existing state_dict file")


#: Every parameter the pipeline reads, with what it accepts. Anything else is a typo to report.
CONSTRAINTS: dict[str, Any] = {
    "labels": Check(resolve_label_set),
    "k": Number(0, open_low=True),
    "lr": Number(0, open_low=True),
    "data.archive": Text(),
    "data.url": Text(optional=True),
    "data.sha256": Text(optional=True, pattern=r"[0-9a-fA-F]{64}", meaning="64 hex digits"),
    "data.on_corrupt": Options(("fail", "skip")),
    "augment.copies": Integer(0),
    "augment.image_size": Integer(32),
    "augment.seed": Integer(0),
    "augment.workers": Integer(0),
    "split.test_size": Number(0, 1, open_low=True, open_high=True),
    "split.val_size": Number(0, 1, open_high=True),
    "split.group_by_source": Options((True, False)),
    "split.seed": Integer(0),
    "model.backbone": Options(tuple(BACKBONES)),
    "model.weights": Check(_weights),
    "model.frozen_convs": Integer(0, N_CONVS),
    "model.frozen_stages": Integer(0, max(units for _, units in BACKBONES.values())),
    "model.head": Options(HEADS),
    "model.inputs": Names(FEATURE_KINDS, required=("trunk",)),
    "model.hidden": Integer(1),
    "model.dropout": Number(0, 1, open_high=True),
    "featurize.precision": Options(FEATURIZE_PRECISIONS),
    "featurize.batch_size": Integer(1),
    "featurize.workers": Integer(0),
    "featurize.device": Text(),
    "featurize.mirror": Options((False, True)),
    "train.epochs": Integer(1),
    "train.batch_size": Integer(1),
    "train.optimizer": Options(OPTIMIZERS),
    "train.weight_decay": Number(0),
    "train.loss": Options(LOSSES),
    "train.gamma": Number(0),
    "train.pos_weight": Options(POS_WEIGHTS),
    "train.label_pca": Integer(0),
    "train.select": Options(SELECTIONS),
    "train.seed": Integer(0),
    "train.device": Text(),
    "train.devices": Integer(1),
    "train.precision": Options(PRECISIONS),
    "evaluate.threshold": Number(0, 1, open_low=True, open_high=True),
    "evaluate.thresholds": Options(THRESHOLDS),
    "evaluate.tta": Options(TTAS),
    "search.images": Text(optional=True),
    "search.top": Integer(1),
    "search.embedding": Options(EMBEDDINGS),
}


def _cross_checks(raw: Mapping[str, Any]) -> None:
    """The rules that join two parameters; raise `FashionError` naming the one to change."""
    if raw["split.val_size"] == 0:
        for key, value in (("train.select", "best"), ("evaluate.thresholds", "tuned")):
            if raw[key] == value:
                raise FashionError(f"{key}: {value!r} needs validation photos; set "
                                   "split.val_size > 0")
    if raw["evaluate.tta"] == "flip" and not raw["featurize.mirror"]:
        raise FashionError("evaluate.tta: 'flip' needs the mirrored features; set "
                           "featurize.mirror: true")
    if raw["split.test_size"] + raw["split.val_size"] >= 1:
        raise FashionError("split.val_size: split.test_size + split.val_size must be < 1, got "
                           f"{raw['split.test_size']} + {raw['split.val_size']}")
    knob, units = BACKBONES[raw["model.backbone"]]
    if raw[knob] > units:
        raise FashionError(f"{knob}: {raw['model.backbone']} has {units} units to freeze, "
                           f"got {raw[knob]}")
    if raw["augment.image_size"] % 32 and raw["model.backbone"] != "vgg16":
        raise FashionError(f"augment.image_size: {raw['model.backbone']} needs a multiple of "
                           f"32, got {raw['augment.image_size']}")


# --------------------------------------------------------------------------- typed parameters


@dataclass(frozen=True)
class DataParams:
    archive: str
    url: str | None
    sha256: str | None
    on_corrupt: str


@dataclass(frozen=True)
class AugmentParams:
    copies: int
    image_size: int
    seed: int
    workers: int


@dataclass(frozen=True)
class SplitParams:
    test_size: float
    val_size: float
    group_by_source: bool
    seed: int


@dataclass(frozen=True)
class ModelParams:
    backbone: str
    weights: str
    frozen_convs: int
    frozen_stages: int
    head: str
    inputs: tuple[str, ...]
    hidden: int
    dropout: float

    @property
    def frozen(self) -> int:
        """Frozen units of the backbone: ``frozen_convs`` for VGG-16, else ``frozen_stages``."""
        return self.frozen_convs if self.backbone == "vgg16" else self.frozen_stages


@dataclass(frozen=True)
class FeaturizeParams:
    precision: str
    batch_size: int
    workers: int
    device: str
    mirror: bool


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    optimizer: str
    weight_decay: float
    loss: str
    gamma: float
    pos_weight: str
    label_pca: int
    select: str
    seed: int
    device: str
    devices: int
    precision: str


@dataclass(frozen=True)
class EvaluateParams:
    threshold: float
    thresholds: str
    tta: str


@dataclass(frozen=True)
class SearchParams:
    images: str | None
    top: int
    embedding: str


_SECTIONS = {"data": DataParams, "augment": AugmentParams, "split": SplitParams,
             "model": ModelParams, "featurize": FeaturizeParams, "train": TrainParams,
             "evaluate": EvaluateParams, "search": SearchParams}


@dataclass(frozen=True)
class Params:
    """``params.yaml`` validated: one frozen object per section, read by attribute.

    ``labels`` holds the resolved attribute names; ``raw`` the mapping as written (MLflow).
    """

    labels: tuple[str, ...]
    k: float
    lr: float
    data: DataParams
    augment: AugmentParams
    split: SplitParams
    model: ModelParams
    featurize: FeaturizeParams
    train: TrainParams
    evaluate: EvaluateParams
    search: SearchParams
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> Params:
        """Validate ``params`` (`validate`) and build the typed object."""
        validate(params)
        raw = flatten(params, join_lists=False)
        sections = {}
        for name, section in _SECTIONS.items():
            values = {f.name: raw[f"{name}.{f.name}"] for f in fields(section)}
            if name == "model":
                values["inputs"] = tuple(values["inputs"])
            sections[name] = section(**values)
        return cls(labels=tuple(resolve_label_set(params["labels"])), k=float(params["k"]),
                   lr=float(params["lr"]), raw=params, **sections)

    def flat(self) -> dict[str, Any]:
        """``{"model.head": ..., ...}``, lists comma-joined: the params MLflow logs."""
        return flatten(self.raw)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file into `Params`; raise `FashionError` naming the first
    bad parameter."""
    path = Path(path)
    try:
        # YAML 1.2, like DVC itself: `dvc exp run -S lr=1e-7` writes `lr: 1e-07`, which is a
        # float in YAML 1.2 but a string to YAML 1.1 parsers such as PyYAML.
        params = YAML(typ="safe", pure=True).load(path.read_text())
    except FileNotFoundError:
        raise FashionError(f"{path} does not exist") from None
    except YAMLError as exc:
        raise FashionError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(params, dict):
        raise FashionError(f"{path}: expected a mapping of parameters")
    return Params.from_mapping(params)


def validate(params: Mapping[str, Any]) -> None:
    """Check every parameter against `CONSTRAINTS`; raise `FashionError` on the first bad one.

    Also refuses unknown keys (with a did-you-mean hint) and the combinations that cannot run
    (`_cross_checks`): a validation-based choice (``train.select: best``,
    ``evaluate.thresholds: tuned``) without validation photos (``split.val_size: 0``),
    ``split.test_size + split.val_size >= 1``, a frozen-part knob past its backbone's units,
    and an image size a non-VGG backbone cannot take (not a multiple of 32).
    """
    flat = flatten(params)
    for key in flat:
        if key not in CONSTRAINTS:
            close = difflib.get_close_matches(key, CONSTRAINTS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise FashionError(f"{key}: unknown parameter{hint}")
    raw = flatten(params, join_lists=False)
    for key, constraint in CONSTRAINTS.items():
        if key not in raw:
            raise FashionError(f"{key}: missing from params.yaml")
        problem = constraint.check(raw[key])
        if problem:
            raise FashionError(problem if problem.startswith(f"{key}: ") else f"{key}: {problem}")
    _cross_checks(raw)


def override(params: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the nested ``params`` with dotted keys set, as ``dvc exp run -S key=value``
    sets them (``{"model.head": "gap"}``); not validated. Raises `FashionError` for a key that
    is not in ``params``."""
    result = copy.deepcopy(dict(params))
    for dotted, value in values.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise FashionError(f"{dotted}: unknown parameter")
        node[leaf] = value
    return result


def flatten(params: Mapping[str, Any], prefix: str = "", *,
            join_lists: bool = True) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become comma-joined strings unless
    ``join_lists`` is false (validation sees them as written)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}.", join_lists=join_lists))
        elif join_lists and isinstance(value, (list, tuple)):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value
    return flat
