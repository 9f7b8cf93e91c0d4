"""`dvc repro` end to end on the generated sample, in a temporary git repo (the session's shared
reference run: conftest.py)."""

import json

import pandas as pd
import pytest
from conftest import run


def test_repro_runs_every_stage_then_nothing(reference_log, reference_copy):
    pipeline_repo = reference_copy
    for stage in ("inputs", "ingest", "augment", "split", "featurize", "train", "evaluate",
                  "index"):
        assert f"Running stage '{stage}'" in reference_log
    metrics = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_test"] == 23 * 2  # photo 5 is truncated: skipped
    # the headline micro-F1 is the pooled per-attribute counts of per_attribute.csv
    table = pd.read_csv(pipeline_repo / "metrics" / "per_attribute.csv")
    table = table[table["evaluated"]]
    tp = table["recall"] * table["support"]
    tn = table["accuracy"] * table["observed"] - tp
    fp = table["observed"] - table["support"] - tn
    pooled = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + (table["support"] - tp).sum())
    assert metrics["f1_micro"] == pytest.approx(pooled, abs=1e-4)
    assert {"baseline_f1_micro", "baseline_map", "f1_micro_fixed", "map"} <= set(metrics)
    for png in ("history", "per_attribute", "pr_curves"):
        assert (pipeline_repo / "metrics" / "plots" / f"{png}.png").stat().st_size > 1000

    second = run(["dvc", "repro"], pipeline_repo)
    # only the always-run fingerprint stage runs; its outputs are unchanged, so nothing else
    assert second.stdout.count("Running stage") == 1
    assert "Running stage 'inputs'" in second.stdout
    assert "Stage 'ingest' didn't change, skipping" in second.stdout
