"""`dvc repro` end to end on the generated sample, in a temporary git repo."""

import json

from conftest import run


def test_repro_runs_every_stage_then_nothing(pipeline_repo):
    first = run(["dvc", "repro"], pipeline_repo)
    for stage in ("ingest", "augment", "split", "featurize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    assert 0 <= metrics["f1_micro"] <= 1
    assert metrics["n_train"] + metrics["n_test"] == 24 * 2
    for png in ("history", "per_attribute", "pr_curves"):
        assert (pipeline_repo / "metrics" / "plots" / f"{png}.png").stat().st_size > 1000

    second = run(["dvc", "repro"], pipeline_repo)
    # only the always-run fingerprint stage runs; its outputs are unchanged, so nothing else
    assert second.stdout.count("Running stage") == 1
    assert "Running stage 'inputs'" in second.stdout
    assert "Stage 'ingest' didn't change, skipping" in second.stdout
