"""Every failure is one line on stderr; an unexpected one keeps its traceback in a log file."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BIN
from faultkit import assert_user_error, run_stage

import fashiondvc.params
from fashiondvc.errors import FashionError, run_main

LOG_LINE = re.compile(r"full traceback in (\S+\.log)$")


def one_line_with_log(stderr: str, *names: str) -> Path:
    """The single stderr line names ``names`` and a log file; return the log's path."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert "Traceback" not in stderr
    found = LOG_LINE.search(lines[0])
    assert found, lines[0]
    return Path(found.group(1))


def test_an_unexpected_error_in_a_stage_is_one_line_and_a_log_with_the_traceback(
        tmp_path, monkeypatch):
    """numpy, scikit-learn or torch raising a ValueError in a stage: one line naming the stage
    and a log under $DVC_ROOT (the user's repository, also for --temp and queued runs)."""
    def broken(*args, **kwargs):
        raise ValueError("mmap length is greater than file size")

    monkeypatch.setattr(fashiondvc.params, "load_params", broken)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    work = tmp_path / "temp-copy"
    work.mkdir()
    result = run_stage("split", "index.csv", "split.csv", cwd=work)
    assert result.code == 1
    log = one_line_with_log(result.stderr, "stage split", "ValueError: mmap length")
    assert log.is_absolute() and log.parent == tmp_path / "repo" / ".fashiondvc" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    assert not list(work.rglob("*.log"))  # nothing in the experiment's temp copy


def test_an_unexpected_error_in_a_command_is_one_line_and_a_log(tmp_path, monkeypatch, capsys):
    from fashiondvc import cli
    from fashiondvc.index import SearchIndex

    def broken(folder):
        raise KeyError("probs")

    monkeypatch.setattr(SearchIndex, "load", broken)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # not a repository: the log goes to the user's cache
    with pytest.raises(SystemExit) as exit_:
        cli.main(["search", "--text", "red"])
    assert exit_.value.code == 1
    log = one_line_with_log(capsys.readouterr().err, "fashiondvc search", "KeyError")
    assert log.resolve().parent == (tmp_path / "cache" / "fashiondvc" / "logs").resolve()
    assert "Traceback" in log.read_text()


def test_user_errors_and_interrupts_stay_one_line_without_a_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for error, code in [(FashionError("lr: must be > 0"), 1),
                        (FileNotFoundError(2, "No such file", "data/x"), 1),
                        (KeyboardInterrupt(), 130)]:
        def main(error=error):
            raise error

        with pytest.raises(SystemExit) as exit_:
            run_main(main)
        assert exit_.value.code == code
        assert len(capsys.readouterr().err.splitlines()) == 1
    assert not (tmp_path / ".fashiondvc").exists()


def stage_env(repo: Path, database: Path) -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{database}", "DVC_ROOT": str(repo)}
    env.pop("DVC_EXP_NAME", None)
    return env


TRAIN = ["data/ingested/labels.csv", "data/split.csv", "data/features", "models/net.pt",
         "metrics/history.csv"]


def test_a_truncated_feature_file_stops_train_with_one_line(reference_copy, tmp_path,
                                                            monkeypatch):
    """A partial ``dvc pull``: numpy's "mmap length is greater than file size" never shows."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    trunk = reference_copy / "data" / "features" / "trunk.npy"
    data = trunk.read_bytes()
    trunk.unlink()  # a link into the DVC cache
    trunk.write_bytes(data[:len(data) // 3])
    result = run_stage("train", *TRAIN, cwd=reference_copy)
    line = assert_user_error(result, "data/features/trunk.npy", "truncated",
                             "rerun the featurize stage")
    assert "mmap" not in line


def test_a_diverging_training_is_one_line_and_its_mlflow_run_ends_failed(reference_copy,
                                                                          tmp_path):
    """``lr: 1e30``: was 60 lines of scikit-learn's "Input contains NaN" and a RUNNING run."""
    params = yaml.safe_load((reference_copy / "params.yaml").read_text())
    params["lr"] = 1e30
    (reference_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    database = tmp_path / "mlflow.db"
    done = subprocess.run([sys.executable, "-m", "stages.train", *TRAIN], cwd=reference_copy,
                          env=stage_env(reference_copy, database), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(r"error: training diverged: the loss became (nan|inf|-inf) at epoch 1, "
                        r"batch \d+; lower lr \(now 1e\+30\)", lines[0]), lines[0]
    with sqlite3.connect(database) as db:
        [(status, run_id)] = db.execute("select status, run_uuid from runs").fetchall()
        [(tag,)] = db.execute("select value from tags where key = 'fashiondvc.error' and "
                              "run_uuid = ?", (run_id,)).fetchall()
    assert status == "FAILED"
    assert tag == lines[0].removeprefix("error: ")
