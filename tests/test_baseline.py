"""The committed baseline: dvc.lock and metrics/ from one real run, consistent with each other.

`dvc metrics diff` on a fresh clone compares an experiment against these files, so they must be
the outputs dvc.lock records (not a later, partial or hand-edited copy), of a real run (the
full archive, not the sample), with the committed parameters except the weights file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ruamel.yaml import YAML

from fashiondvc.params import flatten, load_params

ROOT = Path(__file__).resolve().parent.parent


def lock_stages() -> dict:
    # YAML 1.2 like DVC (PyYAML would read `lr: 1e-07` as a string)
    return YAML(typ="safe", pure=True).load((ROOT / "dvc.lock").read_text())["stages"]


def test_committed_metrics_are_the_outputs_dvc_lock_records():
    outs = {out["path"]: out for out in lock_stages()["evaluate"]["outs"]}
    for name in ("metrics/metrics.json", "metrics/per_attribute.csv", "metrics/pr_curves.csv"):
        digest = hashlib.md5((ROOT / name).read_bytes()).hexdigest()
        assert outs[name]["md5"] == digest, f"{name} is not the file dvc.lock records"
    history = {out["path"]: out for out in lock_stages()["train"]["outs"]}["metrics/history.csv"]
    assert history["md5"] == hashlib.md5((ROOT / "metrics/history.csv").read_bytes()).hexdigest()


def test_the_baseline_is_a_full_real_run_with_the_committed_params():
    metrics = json.loads((ROOT / "metrics/metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_test"] == 1856 * 11  # the real archive, 10 copies
    assert metrics["map"] > metrics["baseline_map"]
    committed = flatten(load_params(ROOT / "params.yaml"))
    for stage in lock_stages().values():
        for key, value in flatten(stage.get("params", {}).get("params.yaml", {})).items():
            if key != "model.weights":  # the baseline ran offline on a local weights file
                assert committed[key] == value, (key, committed[key], value)
