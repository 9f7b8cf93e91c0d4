"""Shared fixtures: a generated archive in the real layout, and a throwaway pipeline repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from serverkit import TrackingServer, mlflow_server, postgres_cluster

from fashiondvc.sample import make_sample_archive

PROJECT = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = PROJECT.parent / "shared" / "data" / "ClothingAttributeDataset.zip"
REAL_WEIGHTS = PROJECT.parent / "shared" / "weights" / "vgg16_imagenet_features.pth"
BIN = Path(sys.executable).parent

#: Small settings so a whole pipeline run takes seconds.
FAST_PARAMS = {
    "labels": "colors11", "k": 2, "lr": 0.003,
    "model.weights": "random", "model.frozen_convs": 13, "model.hidden": 32,
    "augment.copies": 1, "augment.image_size": 32, "augment.workers": 1,
    "featurize.workers": 0, "featurize.batch_size": 16,
    "train.epochs": 2, "train.batch_size": 16,
}


@pytest.fixture(scope="session")
def sample_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-photo archive in the official layout (zip, nested ClothingAttributeDataset/)."""
    return make_sample_archive(tmp_path_factory.mktemp("archive") / "sample.zip", n_images=24)


def set_params(params_file: Path, overrides: dict) -> None:
    """Apply dotted ``key: value`` overrides to a params.yaml."""
    params = yaml.safe_load(params_file.read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def run(command: list[str], cwd: Path, check: bool = True, capture: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's bin/ first on PATH; return the result.

    ``capture=False`` discards the output instead: needed for commands that leave daemons
    behind (``dvc queue start``), which would hold a captured pipe open for their lifetime.
    The caller's ``MLFLOW_TRACKING_URI`` is dropped (runs go to the repo's own store) unless
    ``env`` sets it.
    """
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(kwargs.pop("env", {}))
    output = {"capture_output": True} if capture else {
        "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    kwargs.setdefault("timeout", 1800)
    result = subprocess.run(command, cwd=cwd, env=env, text=True, **output, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{(result.stdout or '')[-4000:]}\n{(result.stderr or '')[-4000:]}")
    return result


def make_repo(repo: Path, archive: Path, **overrides: object) -> Path:
    """A fresh git + DVC repo holding this project's pipeline, set up for ``archive``."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(PROJECT / name, repo / name)
    for folder in ("stages", "fashiondvc", "data", "models"):
        shutil.copytree(PROJECT / folder, repo / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "raw", "demo", "ingested",
                                                      "augmented", "features", "index", "inputs",
                                                      "split.csv", "*.tmp-*"))
    set_params(repo / "params.yaml", {**FAST_PARAMS, "data.archive": str(archive),
                                      **overrides})
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline"], repo)
    return repo


@pytest.fixture
def pipeline_repo(tmp_path: Path, sample_zip: Path) -> Path:
    """A fresh git + DVC repo holding this project's pipeline, set up for the sample archive."""
    archive = tmp_path / "archive" / "sample.zip"
    archive.parent.mkdir()
    shutil.copy(sample_zip, archive)
    return make_repo(tmp_path / "repo", archive)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted `dvc repro` of the reference sample (tests/faultkit.py), shared."""
    from faultkit import reference_repo

    return reference_repo(tmp_path_factory)


@pytest.fixture(scope="session")
def reference_log(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The stdout of the shared reference `dvc repro`."""
    from faultkit import reference_output

    return reference_output(tmp_path_factory)


@pytest.fixture
def reference_copy(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reproduced reference repository (DVC cache included), free to change."""
    shutil.copytree(reference, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


@pytest.fixture
def tracking_server() -> Iterator[TrackingServer]:
    """A throw-away MLflow server on a throw-away PostgreSQL cluster, both on 127.0.0.1."""
    with postgres_cluster() as backend, mlflow_server(backend) as (url, artifacts):
        yield TrackingServer(url, backend, artifacts)


def wait_for_queue(repo, timeout: float = 900) -> str:
    """Poll ``dvc queue status`` until nothing is queued or running; return the last status."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    run(["dvc", "queue", "stop", "--kill"], repo, check=False)
    return status
