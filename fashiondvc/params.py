"""Reading and validating ``params.yaml`` before any stage does work."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from fashiondvc.choices import N_CONVS, OPTIMIZERS, PRECISIONS, WEIGHT_CHOICES
from fashiondvc.dataset import resolve_label_set
from fashiondvc.errors import FashionError

__all__ = ["WEIGHT_CHOICES", "flatten", "load_params", "validate"]


#: Every parameter the pipeline reads; anything else in params.yaml is a typo to report.
KNOWN = frozenset({
    "labels", "k", "lr",
    "data.archive", "data.url", "data.sha256", "data.on_corrupt",
    "augment.copies", "augment.image_size", "augment.seed", "augment.workers",
    "split.test_size", "split.group_by_source", "split.seed",
    "model.weights", "model.frozen_convs", "model.hidden", "model.dropout",
    "featurize.precision", "featurize.batch_size", "featurize.workers", "featurize.device",
    "train.epochs", "train.batch_size", "train.optimizer", "train.weight_decay", "train.seed",
    "train.device", "train.precision",
    "evaluate.threshold",
    "search.images", "search.top",
})


def load_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """Read and validate a params file; raise `FashionError` naming the first bad parameter."""
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
    validate(params)
    return params


def _get(params: Mapping[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise FashionError(f"{dotted}: missing from params.yaml")
        value = value[part]
    return value


def _number(params: Mapping[str, Any], dotted: str, *, kind: type = float,
            low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    value = _get(params, dotted)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not isinstance(value, int)):
        raise FashionError(f"{dotted}: expected {'an integer' if kind is int else 'a number'}, "
                           f"got {value!r}")
    if not math.isfinite(value):
        raise FashionError(f"{dotted}: must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise FashionError(f"{dotted}: must be in {lo or '(-inf'}, {hi or 'inf)'}, got {value}")
    return value


def _choice(params: Mapping[str, Any], dotted: str, choices: tuple[str, ...]) -> str:
    value = _get(params, dotted)
    if value not in choices:
        raise FashionError(f"{dotted}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _string(params: Mapping[str, Any], dotted: str, *, optional: bool = False) -> str | None:
    value = _get(params, dotted)
    if (value is None and optional) or (isinstance(value, str) and value):
        return value
    raise FashionError(f"{dotted}: expected a non-empty string{' or null' if optional else ''}, "
                       f"got {value!r}")


def validate(params: Mapping[str, Any]) -> None:
    """Check every parameter the pipeline reads; raise `FashionError` on the first bad one.

    A ``model.weights`` file is opened (memory-mapped, weights only) and checked key by key
    against VGG-16, so a wrong file stops the pipeline before any stage does work.
    """
    resolve_label_set(_get(params, "labels"))
    _number(params, "k", low=0, low_open=True)
    _number(params, "lr", low=0, low_open=True)
    _string(params, "data.archive")
    _string(params, "data.url", optional=True)
    sha256 = _string(params, "data.sha256", optional=True)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise FashionError(f"data.sha256: expected 64 hex digits or null, got {sha256!r}")
    _choice(params, "data.on_corrupt", ("fail", "skip"))
    _number(params, "augment.copies", kind=int, low=0)
    _number(params, "augment.image_size", kind=int, low=32)
    _number(params, "augment.seed", kind=int, low=0)
    _number(params, "augment.workers", kind=int, low=0)
    _number(params, "split.test_size", low=0, high=1, low_open=True, high_open=True)
    if not isinstance(_get(params, "split.group_by_source"), bool):
        raise FashionError("split.group_by_source: expected true or false")
    _number(params, "split.seed", kind=int, low=0)
    weights = _get(params, "model.weights")
    if not isinstance(weights, str) or (weights not in WEIGHT_CHOICES
                                        and not Path(weights).is_file()):
        raise FashionError(f"model.weights: {weights!r} is neither 'imagenet', 'random' "
                           "nor an existing state_dict file")
    if weights not in WEIGHT_CHOICES:
        from fashiondvc.model import check_state_file  # torch: only for a weights file

        try:
            check_state_file(weights)
        except FashionError as exc:
            raise FashionError(f"model.weights: {exc}") from None
    _number(params, "model.frozen_convs", kind=int, low=0, high=N_CONVS)
    _number(params, "model.hidden", kind=int, low=1)
    _number(params, "model.dropout", low=0, high=1, high_open=True)
    _choice(params, "featurize.precision", PRECISIONS)
    _number(params, "featurize.batch_size", kind=int, low=1)
    _number(params, "featurize.workers", kind=int, low=0)
    _string(params, "featurize.device")
    _number(params, "train.epochs", kind=int, low=1)
    _number(params, "train.batch_size", kind=int, low=1)
    _choice(params, "train.optimizer", OPTIMIZERS)
    _number(params, "train.weight_decay", low=0)
    _number(params, "train.seed", kind=int, low=0)
    _string(params, "train.device")
    _choice(params, "train.precision", PRECISIONS)
    _number(params, "evaluate.threshold", low=0, high=1, low_open=True, high_open=True)
    _string(params, "search.images", optional=True)
    _number(params, "search.top", kind=int, low=1)
    _check_unknown(params)


def _check_unknown(params: Mapping[str, Any]) -> None:
    """Refuse keys the pipeline does not read: `-S train.epoch=5` must not pass silently."""
    for key in flatten(params):
        if key not in KNOWN:
            close = difflib.get_close_matches(key, KNOWN, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise FashionError(f"{key}: unknown parameter{hint}")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists become comma-joined strings)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value
    return flat
