"""A shared DVC remote: a second clone pulls the stored features instead of recomputing them.

Clone A is a copy of the session's reference run (tests/faultkit.py) with its lock committed and
pushed: git to a bare repository, outputs to the DVC remote. Clone B is a ``git clone`` of that
bare repository with an empty cache: ``dvc pull`` brings every output, and ``dvc exp run -S k=5``
then runs train, evaluate and index (plus the always-run ``inputs`` fingerprint) but never
ingest, augment, split or featurize. The default suite uses a local-path remote and checks the
plan (``dvc status``, ``dvc repro --dry`` after setting k) instead of training; the slow suite
runs ``dvc exp run -S k=5`` against an SSH remote on 127.0.0.1 (tests/sshkit.py) and shares a
queued experiment with ``dvc exp push`` / ``dvc exp pull``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import run, set_params
from sshkit import SSHServer, missing, ssh_server

#: Stages a pulled clone must skip: their outputs come from the remote.
PULLED = ("ingest", "augment", "split", "featurize")
#: Stages ``-S k=5`` reruns: ``k`` is a train param; evaluate and index read the new net.pt.
RERUN = ("train", "evaluate", "index")


def lock_outs(repo: Path) -> dict[str, str]:
    """``{output path: md5}`` of every cached output in ``dvc.lock``."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", []) if "md5" in out}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def publish(reference: Path, work: Path, url: str, **local: str) -> tuple[Path, Path]:
    """Clone A (a copy of ``reference``) with remote ``shared`` = ``url``, committed and pushed.

    ``local`` holds ``dvc remote modify --local`` options (a key file): per machine, not in git.
    Returns clone A and the bare git repository it pushed to.
    """
    a = work / "a"
    shutil.copytree(reference, a, symlinks=True)
    origin = work / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], work)
    run(["git", "remote", "add", "origin", str(origin)], a)
    run(["dvc", "remote", "add", "-d", "shared", url], a)
    for option, value in local.items():
        run(["dvc", "remote", "modify", "--local", "shared", option, value], a)
    run(["git", "add", "-A"], a)  # dvc.lock, the remote, the outputs' .gitignore files
    run(["git", "commit", "-qm", "baseline run, shared remote"], a)
    run(["git", "push", "-q", "origin", "main"], a)
    pushed = run(["dvc", "push"], a)
    assert "pushed" in pushed.stdout, pushed.stdout
    return a, origin


def pull_clone(origin: Path, dest: Path, **local: str) -> Path:
    """Clone B: ``git clone`` of ``origin``, this machine's remote options, ``dvc pull``."""
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent)
    for option, value in local.items():
        run(["dvc", "remote", "modify", "--local", "shared", option, value], dest)
    assert not (dest / "data" / "features").exists()
    assert not list((dest / ".dvc").glob("cache/files/md5/*/*"))  # nothing to reuse locally
    run(["dvc", "pull"], dest)
    return dest


def check_pulled(a: Path, b: Path) -> None:
    """B holds A's outputs byte for byte, and DVC finds nothing stale but the fingerprint."""
    assert folder_bytes(b / "data" / "features") == folder_bytes(a / "data" / "features")
    assert (b / "models" / "net.pt").read_bytes() == (a / "models" / "net.pt").read_bytes()
    assert run(["dvc", "status"], b).stdout.split() == ["inputs:", "always", "changed"]


def check_k5_runs_only_training(b: Path) -> None:
    """``dvc exp run -S k=5`` in a pulled clone reruns train, evaluate, index, nothing earlier."""
    before = lock_outs(b)
    log = run(["dvc", "exp", "run", "-S", "k=5"], b).stdout
    for stage in PULLED:
        assert f"Running stage '{stage}'" not in log, log
        assert f"Stage '{stage}' didn't change, skipping" in log, log
    for stage in RERUN:
        assert f"Running stage '{stage}'" in log, log
    after = lock_outs(b)
    assert after["data/features"] == before["data/features"]
    assert after["models/net.pt"] != before["models/net.pt"]  # k=5 trained a new net
    assert yaml.safe_load((b / "params.yaml").read_text())["k"] == 5


def test_second_clone_pulls_features_from_a_local_remote(reference, tmp_path):
    a, origin = publish(reference, tmp_path, str(tmp_path / "remote"))
    assert list((tmp_path / "remote").glob("files/md5/*/*"))
    b = pull_clone(origin, tmp_path / "b")
    check_pulled(a, b)
    # what `dvc exp run -S k=5` would run (the slow test runs it): train, not featurize
    set_params(b / "params.yaml", {"k": 5})
    assert run(["dvc", "status"], b).stdout.split() == [
        "inputs:", "always", "changed", "train:", "changed", "deps:", "params.yaml:",
        "modified:", "k"]
    plan = run(["dvc", "repro", "--dry"], b).stdout
    for stage in PULLED:
        assert f"Stage '{stage}' didn't change, skipping" in plan, plan
    assert "Running stage 'train'" in plan, plan


@pytest.fixture
def sshd() -> Iterator[SSHServer]:
    """A throw-away sshd on 127.0.0.1 (tests/sshkit.py), stopped afterwards."""
    if reason := missing():
        pytest.fail(reason)
    with ssh_server() as server:
        yield server


def wait_for_queue(repo: Path, timeout: float = 600) -> str:
    """Poll ``dvc queue status`` until nothing is queued or running; return the last status."""
    deadline = time.time() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        if ("Queued" not in status and "Running" not in status) or time.time() > deadline:
            return status
        time.sleep(3)


def share_queued_experiment(a: Path, b: Path) -> None:
    """A queued experiment in A, ``dvc exp push origin``; B ``dvc exp pull``s and applies it
    without running anything: its net.pt and metrics are A's bytes."""
    run(["dvc", "exp", "run", "--queue", "-n", "shared-k2", "-S", "k=2.5"], a)
    run(["dvc", "queue", "start"], a, capture=False)
    try:
        status = wait_for_queue(a)
    finally:
        run(["dvc", "queue", "stop", "--kill"], a, check=False)
    assert status.count("Success") == 1, status
    run(["dvc", "exp", "push", "origin", "shared-k2"], a)
    run(["dvc", "exp", "apply", "shared-k2"], a)

    assert "shared-k2" in run(["dvc", "exp", "list", "origin"], b).stdout
    run(["dvc", "exp", "pull", "origin", "shared-k2"], b)
    run(["dvc", "exp", "apply", "shared-k2"], b)
    for name in ("models/net.pt", "metrics/metrics.json", "metrics/history.csv"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    assert lock_outs(b)["models/net.pt"] == lock_outs(a)["models/net.pt"]
    # applied outputs match the lock: nothing left to run but the fingerprint stage
    assert run(["dvc", "status"], b).stdout.split() == ["inputs:", "always", "changed"]


@pytest.mark.slow
def test_second_clone_pulls_features_and_an_experiment_over_ssh(reference, tmp_path, sshd):
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{tmp_path / 'remote'}"
    key = {"keyfile": str(sshd.key)}
    a, origin = publish(reference, tmp_path, url, **key)
    assert list((tmp_path / "remote").glob("files/md5/*/*"))  # written through sshd
    assert sshd.logins() >= 1
    b = pull_clone(origin, tmp_path / "b", **key)
    assert sshd.logins() >= 2  # and read back through it
    check_pulled(a, b)
    check_k5_runs_only_training(b)
    share_queued_experiment(a, b)
