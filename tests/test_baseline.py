"""The committed baseline: dvc.lock and metrics/ from one real run, consistent with each other.

`dvc metrics diff` on a fresh clone compares an experiment against these files, so they must be
the outputs dvc.lock records (not a later, partial or hand-edited copy), of a real run (the
full archive, not the sample), of this pipeline (dvc.yaml's stages, their code and parameters,
today's output formats), with the committed parameters except the weights file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ruamel.yaml import YAML

from fashiondvc.features import FEATURE_KINDS
from fashiondvc.params import flatten, load_params

ROOT = Path(__file__).resolve().parent.parent


def lock_stages() -> dict:
    # YAML 1.2 like DVC (PyYAML would read `lr: 1e-07` as a string)
    return YAML(typ="safe", pure=True).load((ROOT / "dvc.lock").read_text())["stages"]


def pipeline_stages() -> dict:
    return YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]


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
    committed = load_params(ROOT / "params.yaml").flat()
    for stage in lock_stages().values():
        for key, value in flatten(stage.get("params", {}).get("params.yaml", {})).items():
            if key != "model.weights":  # the baseline ran offline on a local weights file
                assert committed[key] == value, (key, committed[key], value)


def test_the_baseline_ran_this_pipeline_and_wrote_todays_formats():
    """A lock of an older pipeline (other stage code, other parameters, another features
    layout) is no baseline for experiments of this one: every stage would rerun."""
    lock, stages = lock_stages(), pipeline_stages()
    assert set(lock) == set(stages)
    for name, stage in stages.items():
        assert lock[name]["cmd"] == stage["cmd"], name
        recorded = {dep["path"] for dep in lock[name].get("deps", [])}
        assert recorded == set(stage.get("deps", [])), (name, recorded ^ set(stage["deps"]))
        listed = {p for p in stage.get("params", []) if isinstance(p, str)}
        assert set(lock[name].get("params", {}).get("params.yaml", {})) == listed, name
    features = {out["path"]: out for out in lock["featurize"]["outs"]}["data/features"]
    assert features["nfiles"] == len(FEATURE_KINDS) + 1  # trunk.npy, side.npy, ..., meta.json
    params = load_params(ROOT / "params.yaml")
    columns = ["epoch", "train_loss", "test_loss", "test_map",
               *(["val_loss", "val_map"] if params.split.val_size > 0 else []), "selected"]
    header = (ROOT / "metrics/history.csv").read_text().splitlines()[0]
    assert header.split(",") == columns  # the columns `fashiondvc.train.fit` writes
