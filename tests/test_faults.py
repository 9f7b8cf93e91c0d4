"""Faults: killed writers, killed stages, interrupted training, an unreachable MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run
from faultkit import (
    REFERENCE_PARAMS,
    closed_port,
    leftovers,
    make_repo,
    reference_archive,
    repro_env,
    repro_until_hang,
    results,
    run_stage,
    wait_dead,
)

from fashiondvc.config import TrainConfig
from fashiondvc.io import _owner_tag, atomic_path, remove_stale_tmp
from fashiondvc.net import AttributeNet
from fashiondvc.rows import FeatureSet
from fashiondvc.train import fit

# --------------------------------------------------------------------------- atomic writes

WRITER = """
import sys, time
from pathlib import Path
from fashiondvc.io import atomic_path
with atomic_path(sys.argv[1], is_dir=True) as tmp:
    (tmp / "part-1").write_text("half")
    print("writing", flush=True)
    time.sleep(120)
    (tmp / "part-2").write_text("done")
"""


def kill_writer_midway(out) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_killed_writer_leaves_no_output_and_its_leftover_is_cleaned(tmp_path):
    out = tmp_path / "data" / "out"
    kill_writer_midway(out)
    assert not out.exists()
    (stale,) = leftovers(tmp_path)
    assert (stale / "part-1").read_text() == "half"

    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "complete").write_text("yes")
    assert [p.name for p in out.iterdir()] == ["complete"]
    assert not leftovers(tmp_path)


def test_killed_writer_keeps_the_previous_output_whole(tmp_path):
    out = tmp_path / "out"
    with atomic_path(out, is_dir=True) as tmp:
        for i in range(50):
            (tmp / f"file-{i}").write_text(str(i))
    kill_writer_midway(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"file-{i}" for i in range(50))


def test_live_writers_and_foreign_leftovers_are_not_touched(tmp_path):
    out = tmp_path / "out"
    live = tmp_path / f".out.tmp-{_owner_tag()}-abc"  # this very process: alive
    other_host = tmp_path / ".out.tmp-00000000-1-abc"
    legacy = tmp_path / ".out.tmp-k3j2h1"
    host = _owner_tag().split("-")[0]
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f".out.tmp-{host}-{done.stdout.strip()}-abc"
    unreaped = subprocess.Popen([sys.executable, "-c", "pass"])  # a zombie once it exits
    zombie = tmp_path / f".out.tmp-{host}-{unreaped.pid}-abc"
    for folder in (live, other_host, legacy, dead, zombie):
        folder.mkdir()
    (zombie / "file").write_text("half")
    while not wait_dead(unreaped.pid):
        pass
    try:
        assert sorted(remove_stale_tmp(out)) == sorted([dead, zombie])
    finally:
        unreaped.wait()
    assert live.exists() and other_host.exists() and legacy.exists()


def test_failed_writer_leaves_nothing(tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert not out.exists()
    assert not leftovers(tmp_path)


# --------------------------------------------------------------------------- training


def toy_sets() -> tuple[FeatureSet, FeatureSet]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8, 2, 2)).astype(np.float32)
    targets = (features[:, :3, 0, 0] > 0).astype(np.float32)
    mask = rng.random(targets.shape) > 0.1
    arrays = {"trunk": features}
    return (FeatureSet(arrays, np.arange(48), targets, mask),
            FeatureSet(arrays, np.arange(48, 64), targets, mask))


def toy_net(hidden: int = 16) -> AttributeNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AttributeNet(torch.nn.Sequential(), {"trunk": (8, 2, 2)}, hidden=hidden,
                            n_labels=3, dropout=0.5)  # dropout: the random state must resume too


CONFIG = TrainConfig(k=2, lr=1e-2, epochs=5, batch_size=8)


class Interrupted(Exception):
    pass


def stop_after(epoch: int):
    def on_epoch(row: dict) -> None:
        if row["epoch"] == epoch:
            raise Interrupted

    return on_epoch


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[list[dict], dict]:
    net = toy_net()
    history = fit(net, *toy_sets(), CONFIG)
    return history, net.state_dict()


def assert_same_run(net: AttributeNet, history: list[dict], uninterrupted) -> None:
    expected_history, expected_state = uninterrupted
    assert history == expected_history  # exact floats, not approx
    for key, value in net.state_dict().items():
        assert torch.equal(value, expected_state[key]), key


def test_interrupted_training_resumes_bit_identical(tmp_path, capsys, uninterrupted):
    checkpoint = tmp_path / "train.pt"
    for stop in (2, 4):  # interrupted twice
        with pytest.raises(Interrupted):
            fit(toy_net(), *toy_sets(), CONFIG, checkpoint=checkpoint, on_epoch=stop_after(stop))
    net = toy_net()
    history = fit(net, *toy_sets(), CONFIG, checkpoint=checkpoint)
    out = capsys.readouterr().out
    assert f"resuming from {checkpoint} after epoch 2" in out
    assert f"resuming from {checkpoint} after epoch 4" in out
    assert_same_run(net, history, uninterrupted)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other network"])
def test_unusable_checkpoint_means_a_fresh_start(tmp_path, capsys, uninterrupted, damage):
    checkpoint = tmp_path / "train.pt"
    if damage == "other network":
        with pytest.raises(Interrupted):
            fit(toy_net(hidden=4), *toy_sets(), CONFIG, checkpoint=checkpoint,
                on_epoch=stop_after(1))
    else:
        with pytest.raises(Interrupted):
            fit(toy_net(), *toy_sets(), CONFIG, checkpoint=checkpoint, on_epoch=stop_after(1))
        data = checkpoint.read_bytes()
        checkpoint.write_bytes(b"not a checkpoint" if damage == "garbage" else data[:100])
    capsys.readouterr()
    net = toy_net()
    history = fit(net, *toy_sets(), CONFIG, checkpoint=checkpoint)
    assert "training from the start" in capsys.readouterr().err
    assert_same_run(net, history, uninterrupted)


# --------------------------------------------------------------------------- whole pipeline


def test_sigkill_in_every_stage_then_repro_matches_an_uninterrupted_run(
        reference, tmp_path, tmp_path_factory):
    """Kill ``dvc repro`` (its whole process group) in the middle of ingest, augment, featurize
    and train in turn, each time with its output half-written; the next ``dvc repro`` finishes
    with the same bytes as an uninterrupted run, and training resumes from its checkpoint."""
    repo = make_repo(tmp_path / "repo", reference_archive(tmp_path_factory), **REFERENCE_PARAMS)
    for stage, half_written, output in [
            ("ingest", "data/.ingested.tmp-*", "data/ingested"),
            ("augment", "data/.augmented.tmp-*", "data/augmented"),
            ("featurize", "data/.features.tmp-*", "data/features"),
            ("train", ".checkpoints/train-*.pt", "models/net.pt")]:
        log = repro_until_hang(repo, stage)
        assert f"Running stage '{stage}'" in log
        assert list(repo.glob(half_written)), f"nothing was half-written when {stage} died"
        assert not (repo / output).exists(), f"{output} exists after {stage} was killed"

    final = run(["dvc", "repro"], repo)
    assert "after epoch 1" in final.stdout and "resuming from .checkpoints/train-" in final.stdout
    assert results(repo) == results(reference)
    assert not leftovers(repo / "data") and not leftovers(repo / "models")
    assert not list((repo / ".checkpoints").iterdir())
    # nothing is stale but the always-run fingerprint stage
    assert run(["dvc", "status"], repo).stdout.split() == ["inputs:", "always", "changed"]


def copy_repo(reference, dest):
    shutil.copytree(reference, dest, symlinks=True)
    return dest


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/a-file/mlflow.db", "http://127.0.0.1:{port}"])
def test_unreachable_mlflow_store_does_not_stop_the_pipeline(reference, tmp_path, uri):
    """A store below a regular file (unwritable even for root), or a closed local port."""
    repo = copy_repo(reference, tmp_path / "repo")
    (repo / "metrics" / "metrics.json").unlink()
    (tmp_path / "a-file").write_text("not a folder")
    env = repro_env(MLFLOW_TRACKING_URI=uri.format(tmp=tmp_path, port=closed_port()),
                    FASHIONDVC_MLFLOW_RETRIES="1", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                    MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    result = subprocess.run(["dvc", "repro", "-f", "-s", "evaluate"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING: MLflow tracking failed, the pipeline goes on" in result.stderr
    assert results(repo) == results(reference)


def test_locked_mlflow_store_does_not_stop_the_evaluate_stage(reference, tmp_path, monkeypatch):
    import sqlite3

    repo = copy_repo(reference, tmp_path / "repo")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    monkeypatch.setenv("FASHIONDVC_MLFLOW_RETRIES", "1")
    lock = sqlite3.connect(repo / "mlflow.db", timeout=0.1)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the store
    try:
        result = run_stage("evaluate", "data/ingested/labels.csv", "data/split.csv",
                           "data/features", "models/net.pt", "metrics/history.csv", "metrics",
                           cwd=repo)
    finally:
        lock.rollback()
        lock.close()
    assert result.code == 0, result.stderr
    assert "WARNING: MLflow tracking failed" in result.stderr
    assert results(repo) == results(reference)
    assert json.loads((repo / "metrics" / "metrics.json").read_text())["n_skipped"] == 1


def test_stage_processes_start_no_network_connections(reference, tmp_path, monkeypatch):
    """Ingest .. evaluate with a local archive, random weights and a local MLflow store only
    ever connect to nothing: every socket connect attempt is recorded and refused."""
    import socket

    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    repo = copy_repo(reference, tmp_path / "repo")
    for stage in ("ingested", "augmented", "features", "split.csv"):
        path = repo / "data" / stage
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    steps = [("ingest", "data/ingested"), ("augment", "data/ingested", "data/augmented"),
             ("split", "data/augmented/index.csv", "data/split.csv"),
             ("featurize", "data/augmented", "data/features"),
             ("train", "data/ingested/labels.csv", "data/split.csv", "data/features",
              "models/net.pt", "metrics/history.csv"),
             ("evaluate", "data/ingested/labels.csv", "data/split.csv", "data/features",
              "models/net.pt", "metrics/history.csv", "metrics")]
    for stage, *args in steps:
        result = run_stage(stage, *args, cwd=repo)
        assert result.code == 0, (stage, result.stderr)
    assert attempts == []
    assert "WARNING" not in result.stderr
    assert results(repo) == results(reference)  # in-process runs are no different
    assert os.path.exists(tmp_path / "mlflow.db")


def mlflow_runs(repo: Path) -> list[tuple[str, str]]:
    """(name, status) of every MLflow run in the repository's SQLite store."""
    import sqlite3

    with sqlite3.connect(repo / "mlflow.db") as db:
        return db.execute("select name, status from runs").fetchall()


@pytest.mark.slow
def test_sigkill_in_evaluate_and_index_then_repro_matches_the_reference(reference, tmp_path):
    """Evaluate killed after writing its metrics, before logging to MLflow; index killed just
    before saving. The next ``dvc repro`` ends with the reference bytes, a complete index, no
    MLflow run left RUNNING and at most one new run."""
    repo = copy_repo(reference, tmp_path / "repo")
    runs_before = mlflow_runs(repo)
    (repo / "metrics" / "metrics.json").unlink()  # evaluate's output gone: it must rerun
    shutil.rmtree(repo / "data" / "index")        # index's output gone: it must rerun
    assert "Running stage 'evaluate'" in repro_until_hang(repo, "evaluate")
    assert mlflow_runs(repo) == runs_before       # killed before logging: no stray run
    assert "Running stage 'index'" in repro_until_hang(repo, "index")
    assert not (repo / "data" / "index").exists()  # never half-written
    final = run(["dvc", "repro"], repo)
    assert "Running stage 'index'" in final.stdout
    assert results(repo) == results(reference)
    runs_after = mlflow_runs(repo)
    assert all(status == "FINISHED" for _, status in runs_after)
    assert len(runs_before) <= len(runs_after) <= len(runs_before) + 1
    assert json.loads((repo / "data" / "index" / "meta.json").read_text())["n_images"] == 23
    assert run(["dvc", "status"], repo).stdout.split() == ["inputs:", "always", "changed"]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "command"), [
    (signal.SIGINT, ("dvc", "repro")), (signal.SIGTERM, ("dvc", "repro")),
    (signal.SIGINT, ("dvc", "exp", "run"))], ids=["ctrl-c", "sigterm", "ctrl-c-exp-run"])
def test_ctrl_c_or_sigterm_in_training_keeps_the_finished_epoch(reference, tmp_path,
                                                                 tmp_path_factory, sig, command):
    """Ctrl-C (SIGINT to the process group) and SIGTERM after epoch 1 keep its checkpoint, as
    SIGKILL does, and the next ``dvc repro`` resumes from it (issue 23)."""
    repo = make_repo(tmp_path / "repo", reference_archive(tmp_path_factory), **REFERENCE_PARAMS)
    log = repro_until_hang(repo, "train", sig=sig, command=command)
    assert "Running stage 'train'" in log
    assert list(repo.glob(".checkpoints/train-*.pt")), f"no checkpoint after {sig.name}:\n{log}"
    final = run(["dvc", "repro"], repo)
    assert "resuming from .checkpoints/train-" in final.stdout
    assert results(repo) == results(reference)
