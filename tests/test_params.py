"""params.yaml is validated once, into typed objects: every key's bad values, generated from the
constraints table, and every rule that joins two parameters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from fashiondvc import params as params_module
from fashiondvc.errors import FashionError
from fashiondvc.params import (
    CONSTRAINTS,
    Check,
    Names,
    Number,
    Options,
    Params,
    Text,
    flatten,
    load_params,
    override,
    validate,
)

PROJECT = Path(__file__).resolve().parents[1]


def defaults() -> dict:
    return YAML(typ="safe", pure=True).load((PROJECT / "params.yaml").read_text())


def with_value(params: dict, key: str, value: object) -> dict:
    return override(params, {key: value})


#: Bad values of the `Check` constraints, which have no generic counterexample.
CHECKED = {"labels": ["nonsense", [], ["red", "red"], 3],
           "model.weights": ["no/such/weights.pth", "", 7]}


def bad_values(key: str, constraint) -> list:
    """Values ``constraint`` must refuse, derived from its kind and bounds."""
    if isinstance(constraint, Number):
        bad = ["abc", None, True, math.nan, math.inf]
        if constraint.low is not None:
            bad.append(constraint.low if constraint.open_low else constraint.low - 1)
        if constraint.high is not None:
            bad.append(constraint.high if constraint.open_high else constraint.high + 1)
        if constraint.integer:
            bad.append((constraint.low or 0) + 1.5)
        return bad
    if isinstance(constraint, Options):
        first = constraint.choices[0]
        return ["yes", 1, None] if isinstance(first, bool) else ["nonsense", None, True]
    if isinstance(constraint, Text):
        bad = ["", 5, ["a"]] + ([] if constraint.optional else [None])
        return bad + (["xyz"] if constraint.pattern else [])
    if isinstance(constraint, Names):
        bad = ["trunk", [], ["trunk", "bogus"], ["trunk", "trunk"], [3]]
        return bad + [[c for c in constraint.choices if c not in constraint.required]]
    if isinstance(constraint, Check):
        return CHECKED[key]
    raise AssertionError(f"{key}: no bad values for {type(constraint).__name__}")


CASES = [(key, value) for key, constraint in CONSTRAINTS.items()
         for value in bad_values(key, constraint)]


def test_every_constraint_kind_yields_bad_values_for_every_key():
    for key, constraint in CONSTRAINTS.items():
        assert len(bad_values(key, constraint)) >= 3, key


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v!r}" for k, v in CASES])
def test_a_bad_value_is_refused_with_one_line_naming_the_key(key, value):
    with pytest.raises(FashionError) as caught:
        validate(with_value(defaults(), key, value))
    message = str(caught.value)
    assert message.startswith(f"{key}: "), message
    assert "\n" not in message


def test_the_committed_params_are_valid_and_every_key_is_a_typed_attribute():
    params = Params.from_mapping(defaults())
    for key in CONSTRAINTS:
        section, _, name = key.partition(".")
        value = getattr(getattr(params, section), name) if name else getattr(params, section)
        if key == "labels":
            assert value == tuple(params.labels)
        elif key == "model.inputs":
            assert value == ("trunk",)
        else:
            assert value == flatten(defaults(), join_lists=False)[key], key
    assert set(flatten(defaults(), join_lists=False)) == set(CONSTRAINTS)


def test_params_are_frozen_and_read_by_attribute(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    params = load_params(path)
    assert params.model.frozen == params.model.frozen_convs == 12
    with pytest.raises(AttributeError):
        params.model.head = "gap"  # frozen dataclass
    assert params.flat()["model.inputs"] == "trunk"


def test_the_frozen_knob_follows_the_backbone():
    params = Params.from_mapping(with_value(with_value(defaults(), "model.backbone", "resnet50"),
                                            "model.frozen_stages", 3))
    assert params.model.frozen == 3


def test_unknown_and_missing_keys_are_named():
    params = defaults()
    params["train"]["epoch"] = 5
    with pytest.raises(FashionError, match=r"^train\.epoch: unknown parameter \(did you mean "
                                           r"train\.epochs\?\)$"):
        validate(params)
    with pytest.raises(FashionError, match=r"^train\.epoch: unknown parameter$"):
        override(defaults(), {"train.epoch": 5})
    params = defaults()
    del params["model"]["inputs"]
    with pytest.raises(FashionError, match=r"^model\.inputs: missing from params\.yaml$"):
        validate(params)


# --------------------------------------------------------------------------- cross rules


@pytest.mark.parametrize(("key", "value"), [("train.select", "best"),
                                            ("evaluate.thresholds", "tuned")])
def test_a_validation_based_choice_needs_validation_photos(key, value):
    params = with_value(defaults(), key, value)
    with pytest.raises(FashionError, match=rf"^{key}: '{value}' needs validation photos"):
        validate(params)
    validate(with_value(params, "split.val_size", 0.1))  # fine with validation photos


def test_test_and_validation_shares_must_leave_training_photos():
    params = with_value(with_value(defaults(), "split.test_size", 0.5), "split.val_size", 0.5)
    with pytest.raises(FashionError, match=r"^split\.val_size: split\.test_size \+ "
                                           r"split\.val_size must be < 1, got 0\.5 \+ 0\.5$"):
        validate(params)
    validate(with_value(params, "split.val_size", 0.49))


def test_non_vgg_backbones_need_image_sizes_divisible_by_32():
    params = with_value(with_value(defaults(), "model.backbone", "convnext_tiny"),
                        "augment.image_size", 48)
    with pytest.raises(FashionError, match=r"^augment\.image_size: convnext_tiny needs a "
                                           r"multiple of 32, got 48$"):
        validate(params)
    validate(with_value(params, "augment.image_size", 64))
    validate(with_value(defaults(), "augment.image_size", 48))  # VGG-16 takes any size >= 32


def test_the_frozen_knob_cannot_pass_its_backbones_units(monkeypatch):
    # every backbone shipped today has 5 stages, the constraint's own bound; a backbone with
    # fewer must still be refused past its end
    monkeypatch.setitem(params_module.BACKBONES, "resnet50", ("model.frozen_stages", 3))
    params = with_value(with_value(defaults(), "model.backbone", "resnet50"),
                        "model.frozen_stages", 4)
    with pytest.raises(FashionError, match=r"^model\.frozen_stages: resnet50 has 3 units to "
                                           r"freeze, got 4$"):
        validate(params)
    validate(with_value(params, "model.frozen_stages", 3))


def test_flip_tta_needs_the_mirrored_features():
    params = with_value(defaults(), "evaluate.tta", "flip")
    with pytest.raises(FashionError, match=r"^evaluate\.tta: 'flip' needs the mirrored "
                                           r"features; set featurize\.mirror: true$"):
        validate(params)
    validate(with_value(params, "featurize.mirror", True))
