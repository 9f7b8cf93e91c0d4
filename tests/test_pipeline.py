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


#: stderr lines a user may see from a healthy run: the project's progress lines (a name, a
#: percentage or a count) and the stage scripts' own messages. Anything else (a dependency's
#: warning, an INFO log line, a traceback) is noise that buries them.
PROGRESS = r"^[\w /.-]+: +(\d+%|\d+/\d+|\d+ ?\w+)"


def test_a_healthy_repro_prints_no_dependency_warnings_or_info_lines(reference,
                                                                      tmp_path_factory):
    import re

    from faultkit import reference_output

    stderr = reference_output(tmp_path_factory, "stderr")
    noise = [line for line in stderr.splitlines()
             if line.strip() and not re.match(PROGRESS, line.strip())]
    assert noise == [], "\n".join(noise[:20])
    metrics = json.loads((reference / "metrics" / "metrics.json").read_text())
    assert {"accuracy_mean", "balanced_accuracy", "baseline_accuracy_mean"} <= set(metrics)
    assert 0 <= metrics["balanced_accuracy"] <= 1
