"""Atomic, strict-JSON output files."""

import json
import math

import numpy as np

from fashiondvc.io import write_json


def test_nan_and_infinity_are_written_as_null_and_the_file_is_strict_json(tmp_path):
    write_json(tmp_path / "m.json", {"map": float("nan"), "f1": 0.5, "inf": math.inf,
                                     "numpy": np.float64("nan"), "nested": [1.0, -math.inf]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert strict == {"map": None, "f1": 0.5, "inf": None, "numpy": None, "nested": [1.0, None]}
