"""MLflow tracking against real SQLite stores in temp folders: concurrency, failures, live runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fashiondvc import tracking

LOG_ONE = """
import os, sys
os.environ["DVC_EXP_NAME"] = sys.argv[1]
from fashiondvc import tracking
run_id = tracking.log_evaluation({"k": 2}, [{"epoch": 1, "train_loss": 0.5}], {"f1_micro": 0.4},
                                 [], "abc")
print("RUN", run_id)
"""


def runs(database: Path) -> list[tuple[str, str]]:
    """(name, status) of every run in a SQLite store, sorted."""
    with sqlite3.connect(database) as db:
        return sorted(db.execute("select name, status from runs").fetchall())


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A fresh (not yet created) SQLite store; the path of its database file."""
    database = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return database


def test_first_use_of_a_store_waits_for_the_schema_lock(store, monkeypatch):
    """Creating the schema goes through the file lock next to the database: while another
    process holds it, opening the store waits (here: times out and gives up)."""
    from filelock import FileLock, Timeout

    monkeypatch.setattr(tracking, "LOCK_TIMEOUT_S", 0.5)
    monkeypatch.setenv("FASHIONDVC_MLFLOW_RETRIES", "0")
    with FileLock(f"{store}-lock"), pytest.raises(Timeout):
        tracking.open_client()
    assert not store.exists()  # nothing touched the database while the lock was held


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_first_use_of_a_fresh_store_loses_no_run(store, n):
    """N evaluate-like processes log at once to a store that does not exist yet: N runs, all
    FINISHED (without the lock, 1 of them survived: Alembic migrations raced)."""
    env = {**os.environ, "FASHIONDVC_MLFLOW_RETRIES": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", LOG_ONE, f"run{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=store.parent) for i in range(n)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for out, err in outputs:
        assert "WARNING" not in err, err[-2000:]
        assert "RUN " in out and "RUN None" not in out
    assert runs(store) == [(f"run{i}", "FINISHED") for i in range(n)]


# --------------------------------------------------------------------------- one run per pipeline

PARAMS = {"k": 2, "lr": 0.001, "train.epochs": 2}
HISTORY = [{"epoch": 1, "train_loss": 0.9, "test_loss": 1.0, "test_map": 0.2, "selected": 0},
           {"epoch": 2, "train_loss": 0.7, "test_loss": 0.8, "test_map": 0.3, "selected": 1}]


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking.tracking_uri())


def all_runs() -> list:
    experiment = client().get_experiment_by_name(tracking.EXPERIMENT)
    return client().search_runs([experiment.experiment_id], run_view_type=3)  # ALL


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A created, migrated, empty SQLite store (creating one takes seconds: copy this one)."""
    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
        tracking.open_client()
    return database


@pytest.fixture
def workspace(store, empty_store, tmp_path, monkeypatch) -> Path:
    """A project folder holding the stage outputs `relog` reads, and a store; the current
    directory."""
    import json
    import shutil

    import pandas as pd

    shutil.copy(empty_store, store)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "metrics.json").write_text(json.dumps({"f1_micro": 0.5,
                                                                  "map": None}))
    pd.DataFrame(HISTORY).to_csv(tmp_path / "metrics" / "history.csv", index=False)
    (tmp_path / "metrics" / "pr_curves.csv").write_text("recall,precision\n0,1\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.pt").write_bytes(b"weights")
    (tmp_path / "data" / "ingested").mkdir(parents=True)
    (tmp_path / "data" / "ingested" / "manifest.json").write_text(
        json.dumps({"archive_sha256": "cafe"}))
    return tmp_path


def test_train_opens_a_live_run_that_evaluate_completes(workspace):
    live = tracking.start_live_run(PARAMS)
    run_id = live.run.run_id
    assert client().get_run(run_id).info.status == "RUNNING"
    epochs = [{k: v for k, v in row.items() if k != "selected"} for row in HISTORY]
    live.log_epoch(epochs[0])  # curves grow as epochs end (fit adds `selected` at the end)
    assert [m.value for m in client().get_metric_history(run_id, "epoch_test_map")] == [0.2]
    live.log_epoch(epochs[1])
    live.handover(HISTORY, "models/net.pt")
    assert tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.5, "map": None},
                                   tracking.stage_artifacts("metrics"), "cafe",
                                   "models/net.pt") == run_id
    [run] = all_runs()
    assert (run.info.run_id, run.info.status, run.info.run_name) == (run_id, "FINISHED", "exp-a")
    assert sorted((m.step, m.value) for m in
                  client().get_metric_history(run_id, "epoch_test_map")) == [(1, 0.2), (2, 0.3)]
    assert [m.value for m in client().get_metric_history(run_id, "epoch_selected")] == [0, 1]
    assert run.data.metrics["f1_micro"] == 0.5 and "map" not in run.data.metrics
    assert run.data.tags["dataset.sha256"] == "cafe"
    artifacts = {a.path for a in client().list_artifacts(run_id)}
    assert {"metrics.json", "history.csv", "pr_curves.csv"} <= artifacts


def test_evaluate_after_a_restored_train_logs_a_fresh_run(workspace):
    """DVC restored `train` from its run cache: the run of the older pipeline (FINISHED) is
    never reused; evaluate opens a new one and logs the curves from history.csv."""
    live = tracking.start_live_run(PARAMS)
    live.handover(HISTORY, "models/net.pt")
    first = tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.5}, [], "cafe",
                                    "models/net.pt")
    second = tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.5}, [], "cafe",
                                     "models/net.pt")
    assert second not in (None, first)
    assert sorted(r.info.status for r in all_runs()) == ["FINISHED", "FINISHED"]
    history = client().get_metric_history(second, "epoch_train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.7)]


def test_a_commit_while_a_workspace_run_trains_does_not_orphan_its_run(workspace,
                                                                       monkeypatch):
    """`dvc repro` names its run workspace@<commit>; a commit made while it trains changes
    that name before evaluate runs: evaluate still ends train's run (and keeps its name)."""
    monkeypatch.delenv("DVC_EXP_NAME")
    monkeypatch.setattr(tracking, "git_revision", lambda: "aaaaaaa" * 6)
    live = tracking.start_live_run(PARAMS)
    live.handover(HISTORY, "models/net.pt")
    monkeypatch.setattr(tracking, "git_revision", lambda: "bbbbbbb" * 6)
    assert tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.5}, [], "cafe",
                                   "models/net.pt") == live.run.run_id
    [run] = all_runs()
    assert (run.info.status, run.info.run_name) == ("FINISHED", "workspace@aaaaaaa")


def test_a_run_of_another_model_or_params_is_not_adopted(workspace):
    live = tracking.start_live_run(PARAMS)
    live.handover(HISTORY, "models/net.pt")
    (workspace / "models" / "net.pt").write_bytes(b"other weights")
    run_id = tracking.log_evaluation(PARAMS, HISTORY, {}, [], "cafe", "models/net.pt")
    assert run_id != live.run.run_id
    statuses = {r.info.run_id: r.info.status for r in all_runs()}
    assert statuses == {run_id: "FINISHED", live.run.run_id: "FAILED"}  # orphan: not RUNNING


def test_a_new_training_marks_the_killed_pipelines_run_failed(workspace):
    killed = tracking.start_live_run(PARAMS)  # the pipeline died here (dvc queue kill, ^C)
    again = tracking.start_live_run(PARAMS)
    assert client().get_run(killed.run.run_id).info.status == "FAILED"
    assert client().get_run(again.run.run_id).info.status == "RUNNING"


def test_only_rank_zero_tracks(workspace, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert tracking.start_live_run(PARAMS) is None
    assert runs(tracking.sqlite_path(tracking.tracking_uri())) == []


def test_a_failure_after_the_run_exists_marks_it_failed_and_track_relogs_it(workspace,
                                                                            capsys):
    def broken(run):
        raise RuntimeError("disk full")

    assert tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.5}, [], "cafe",
                                   "models/net.pt", broken) is None
    err = capsys.readouterr().err
    assert "WARNING: MLflow tracking failed" in err and "marked FAILED" in err
    [warning] = [line for line in err.splitlines() if "WARNING" in line]  # one line
    assert "fashiondvc track" in warning
    [failed] = all_runs()
    assert failed.info.status == "FAILED"

    from fashiondvc.cli import main

    main(["track", "--no-model"])
    [run] = [r for r in all_runs() if r.info.lifecycle_stage == "active"]
    assert run.info.status == "FINISHED" and run.info.run_name == "exp-a"
    assert client().get_run(failed.info.run_id).info.lifecycle_stage == "deleted"
    assert run.data.metrics["f1_micro"] == 0.5 and run.data.params["k"] == "3"  # params.yaml
    assert "pr_curves.csv" in {a.path for a in client().list_artifacts(run.info.run_id)}
    main(["track", "--no-model"])  # idempotent: already logged
    assert "already logged" in capsys.readouterr().out
    assert len([r for r in all_runs() if r.info.lifecycle_stage == "active"]) == 1


def test_track_names_a_missing_stage_output(workspace, capsys):
    (workspace / "metrics" / "history.csv").unlink()
    from fashiondvc.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["track", "--no-model"])
    assert exit_.value.code == 1
    assert "metrics/history.csv does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_store_locked_at_training_start_leaves_no_run(workspace, monkeypatch, capsys):
    tracking.experiment_id(tracking.open_client())
    monkeypatch.setenv("FASHIONDVC_MLFLOW_RETRIES", "0")
    lock = sqlite3.connect(tracking.sqlite_path(tracking.tracking_uri()), timeout=0.1)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        assert tracking.start_live_run(PARAMS) is None
    finally:
        lock.rollback()
        lock.close()
    assert "WARNING: MLflow tracking failed" in capsys.readouterr().err
    assert [r.info.status for r in all_runs()] in ([], ["FAILED"])


@pytest.mark.slow
def test_a_store_locked_while_evaluate_logs_is_repaired_by_track(workspace, monkeypatch,
                                                                 capsys):
    """Another process holds the store past the retries after the run was created: the run
    cannot even be marked FAILED; the warning says how to log it again, and `fashiondvc track`
    replaces it with one FINISHED run."""
    monkeypatch.setenv("FASHIONDVC_MLFLOW_RETRIES", "0")
    held = []

    def lock_the_store(run):
        held.append(sqlite3.connect(tracking.sqlite_path(tracking.tracking_uri()),
                                    timeout=0.1, check_same_thread=False))
        held[0].execute("BEGIN EXCLUSIVE")

    try:
        assert tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.5}, [], "cafe",
                                       "models/net.pt", lock_the_store) is None
    finally:
        held[0].rollback()
        held[0].close()
    err = capsys.readouterr().err
    assert "left unfinished" in err and "fashiondvc track" in err
    [stuck] = all_runs()
    assert stuck.info.status == "RUNNING"
    monkeypatch.setenv("FASHIONDVC_MLFLOW_RETRIES", "2")
    from fashiondvc.cli import main

    main(["track", "--no-model"])
    active = [r for r in all_runs() if r.info.lifecycle_stage == "active"]
    assert [(r.info.run_name, r.info.status) for r in active] == [("exp-a", "FINISHED")]


@pytest.mark.slow
def test_a_pipeline_run_is_one_finished_run_also_when_train_is_not_rerun(pipeline_repo):
    """`dvc repro`: train opens the run, evaluate ends it (one run, curves, every metrics
    file). Evaluate alone again (train's outputs reused, as from DVC's run cache): a second,
    fresh run with the curves from history.csv; the first is left as it was."""
    from conftest import run as run_command
    from mlflow.tracking import MlflowClient

    repo = pipeline_repo
    first = run_command(["dvc", "repro"], repo)
    assert "is live:" in first.stdout and "127.0.0.1:5000" in first.stdout
    run_command(["dvc", "repro", "-f", "-s", "evaluate"], repo)
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashiondvc")
    found = sorted(client.search_runs([experiment.experiment_id]),
                   key=lambda r: r.info.start_time)
    assert [r.info.status for r in found] == ["FINISHED", "FINISHED"]
    rev = run_command(["git", "rev-parse", "HEAD"], repo).stdout.strip()[:7]
    assert {r.info.run_name for r in found} == {f"workspace@{rev}"}
    for r in found:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch_test_map")]
        assert sorted(steps) == [1, 2]
        assert "f1_micro" in r.data.metrics and r.data.params["k"] == "2"
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"metrics.json", "per_attribute.csv", "pr_curves.csv", "history.csv",
                "plots"} <= files
    assert found[0].data.tags[tracking.MODEL_TAG] == found[1].data.tags[tracking.MODEL_TAG]


def test_a_failed_train_or_evaluate_ends_the_live_run_failed(workspace):
    """Any exception in train ends its run FAILED (Ctrl-C: KILLED), one in evaluate ends the
    run train opened: none is left RUNNING, and the error is a tag."""
    live = tracking.start_live_run(PARAMS)
    live.fail(KeyboardInterrupt())
    live = tracking.start_live_run(PARAMS)
    live.handover(HISTORY, "models/net.pt")
    tracking.fail_evaluation(PARAMS, "models/net.pt", ValueError("Input contains NaN.\nmore"))
    runs_ = sorted(all_runs(), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs_] == ["KILLED", "FAILED"]
    assert runs_[1].data.tags[tracking.ERROR_TAG] == "ValueError: Input contains NaN."


# --------------------------------------------------------------------------- the store changed


def test_a_deleted_experiment_is_restored_and_track_works(workspace, capsys):
    """Deleted in the MLflow UI: the next run restores it (one line) instead of failing after
    the retries, and so does `fashiondvc track`, the remedy the warnings name."""
    first = tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.5}, [], "cafe")
    experiment = client().get_experiment_by_name(tracking.EXPERIMENT)
    client().delete_experiment(experiment.experiment_id)
    capsys.readouterr()
    second = tracking.log_evaluation(PARAMS, HISTORY, {"f1_micro": 0.6}, [], "cafe")
    err = capsys.readouterr().err
    assert second not in (None, first)
    assert "WARNING" not in err and "retry" not in err
    [notice] = [line for line in err.splitlines() if "restored" in line]
    assert f"experiment 'fashiondvc' ({experiment.experiment_id}) had been deleted" in notice
    again = client().get_experiment(experiment.experiment_id)
    assert again.lifecycle_stage == "active"
    assert client().get_run(second).info.experiment_id == experiment.experiment_id

    from fashiondvc.cli import main

    client().delete_experiment(experiment.experiment_id)
    main(["track", "--no-model"])
    out, err = capsys.readouterr()
    assert "logged run 'exp-a'" in out and "restored" in err and "WARNING" not in err


@pytest.mark.slow
def test_a_deleted_trunk_experiment_is_restored(workspace, capsys):
    from searchkit import model_config

    from fashiondvc import mlmodel

    run = tracking.TrackedRun.create(client(), tracking.experiment_id(client()), "exp-t", {})
    first = mlmodel.store_trunk(run, model_config())
    trunks = client().get_experiment_by_name(mlmodel.TRUNK_EXPERIMENT)
    client().delete_experiment(trunks.experiment_id)
    capsys.readouterr()
    assert mlmodel.store_trunk(run, model_config()) == first  # its trunk run came back too
    err = capsys.readouterr().err
    assert f"experiment '{mlmodel.TRUNK_EXPERIMENT}'" in err and "restored" in err
    assert client().get_experiment(trunks.experiment_id).lifecycle_stage == "active"


@pytest.mark.slow
def test_a_moved_repository_keeps_its_models_and_writes_under_the_new_root(tmp_path,
                                                                           monkeypatch, capsys):
    """`mv repo repo2` after a run: registered versions load from repo2, the next run's
    artifacts land in repo2/mlartifacts and repo/ is not recreated; a version whose artifacts
    are gone fails in one line."""
    import shutil

    import mlflow.pyfunc
    import pandas as pd
    from searchkit import save_tiny_net

    from fashiondvc import mlmodel
    from fashiondvc.errors import FashionError
    from fashiondvc.registry import open_model
    from fashiondvc.sample import make_sample_archive

    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    old, new = tmp_path / "repo", tmp_path / "repo2"
    old.mkdir()
    monkeypatch.chdir(old)
    model = save_tiny_net(old / "net.pt")
    uris = []
    for name in ("exp-a", "exp-b"):
        run = tracking.TrackedRun.create(tracking.open_client(),
                                         tracking.experiment_id(tracking.open_client()), name, {})
        uris.append(mlmodel.log_model(run, model, "cafe"))
        run.finish()
    assert (old / "mlartifacts").is_dir()
    shutil.copytree(old, new)  # mv repo repo2
    shutil.rmtree(old)
    monkeypatch.chdir(new)
    capsys.readouterr()

    opened = open_model(uris[0])
    err = capsys.readouterr().err
    [notice] = [line for line in err.splitlines() if "moved" in line]
    assert f"moved from {old} to {new}" in notice
    photo = sorted((make_sample_archive(tmp_path / "s", n_images=4, folder=True)
                    / "images").glob("*.jpg"))[0].read_bytes()
    probs, _ = opened.predictor.photo(photo, "p.jpg")
    table = mlflow.pyfunc.load_model(uris[0]).predict(pd.DataFrame({"photo": [photo]}))
    assert table.iloc[0, :len(probs)].astype(float).tolist() == pytest.approx(probs.tolist(),
                                                                              abs=1e-6)
    run = tracking.TrackedRun.create(tracking.open_client(),
                                     tracking.experiment_id(tracking.open_client()), "next", {})
    run.log_artifacts([new / "net.pt"])
    artifact_uri = client().get_run(run.run_id).info.artifact_uri
    assert artifact_uri.startswith((new / "mlartifacts").as_uri())
    assert client().get_run(run.run_id).data.tags[tracking.ROOT_TAG] == str(new)
    assert not old.exists()
    assert "moved" not in capsys.readouterr().err  # rewritten once

    version = client().get_model_version(mlmodel.REGISTERED_NAME, "2")
    from urllib.parse import urlparse

    stored = Path(urlparse(client().get_run(version.run_id).info.artifact_uri).path)
    assert stored.is_relative_to(new / "mlartifacts")
    shutil.rmtree(stored / "model")
    with pytest.raises(FashionError) as raised:
        open_model(uris[1])
    message = str(raised.value)
    assert "version 2" in message and "its artifacts were stored at" in message
    assert str(new / "mlartifacts") in message and "\n" not in message
