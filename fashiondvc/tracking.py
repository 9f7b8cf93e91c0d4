"""MLflow tracking: one run per pipeline run, logged by the evaluate stage.

The store is SQLite at ``<DVC_ROOT>/mlflow.db`` with artifacts in ``<DVC_ROOT>/mlartifacts``.
DVC sets ``DVC_ROOT`` to the user's repository even for queued and ``--temp`` experiments, which
run in a copy under ``.dvc/tmp/exps``, so every run lands in the user's store.
``MLFLOW_TRACKING_URI`` overrides it. Tracking never breaks a pipeline run: when the store is
locked or unreachable, each call is retried, then the run goes on with a warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

EXPERIMENT = "fashiondvc"
T = TypeVar("T")


def project_root() -> Path:
    """The user's DVC repository: ``$DVC_ROOT`` when DVC runs us, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, or SQLite in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_location() -> str:
    return (project_root() / "mlartifacts").as_uri()


def with_retries(action: Callable[[], T], what: str, attempts: int | None = None,
                 delay: float = 0.5) -> T:
    """Call ``action``, retrying with exponential backoff; re-raise the last error.

    ``attempts`` defaults to 1 + ``$FASHIONDVC_MLFLOW_RETRIES`` (4 retries when unset).
    """
    if attempts is None:
        retries = os.environ.get("FASHIONDVC_MLFLOW_RETRIES", "4")
        attempts = 1 + (int(retries) if retries.isdigit() else 4)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # MLflow wraps SQLite and HTTP errors in several types
            if attempt == attempts:
                raise
            print(f"mlflow: {what} failed ({type(exc).__name__}: {exc}); "
                  f"retry {attempt}/{attempts - 1}", file=sys.stderr)
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def git_revision() -> str:
    """The baseline commit: ``$DVC_EXP_BASELINE_REV`` in experiments, else ``HEAD``."""
    if rev := os.environ.get("DVC_EXP_BASELINE_REV"):
        return rev
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def log_pipeline_run(params: Mapping[str, Any], history: list[dict],
                     metrics: Mapping[str, float], artifacts: Iterable[str | os.PathLike],
                     tags: Mapping[str, str]) -> str | None:
    """Log one complete pipeline run; return its run id, or None if tracking was unavailable.

    Parameters
    ----------
    params : mapping
        Flattened ``params.yaml``.
    history : list of dict
        Per-epoch rows (``epoch`` plus metric columns), logged as step metrics named
        ``epoch_<column>``.
    metrics : mapping
        Final metrics.
    artifacts : iterable of paths
        Files or folders to attach (metrics, plots, weights).
    tags : mapping
        Run tags; the DVC experiment name, when set, also becomes the run name.
    """
    try:
        return _log(params, history, metrics, artifacts, tags)
    except Exception as exc:
        print(f"WARNING: MLflow tracking failed, the pipeline goes on without it: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _log(params, history, metrics, artifacts, tags) -> str:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's HTTP client retries 5 times with a 120 s timeout by default (minutes against a
    # dead server); `with_retries` already retries each call, so keep MLflow's own loop short.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri)

    def experiment_id() -> str:
        found = client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(EXPERIMENT, artifact_location=artifact_location())
        except Exception:
            found = client.get_experiment_by_name(EXPERIMENT)  # created meanwhile by a sibling
            if found is None:
                raise
            return found.experiment_id

    exp_id = with_retries(experiment_id, "open experiment")
    run_name = os.environ.get("DVC_EXP_NAME") or f"workspace@{git_revision()[:7]}"
    run = with_retries(lambda: client.create_run(exp_id, run_name=run_name, tags=dict(tags)),
                       "create run")
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    # per-epoch curves get an "epoch_" prefix: the final train/test losses are measured
    # differently (eval mode, whole set) and must not land on the same curve
    entries = [Metric(f"epoch_{key}", float(value), now, int(row["epoch"]))
               for row in history for key, value in row.items() if key != "epoch"]
    entries += [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    param_entries = [Param(key, str(value)) for key, value in params.items()]
    for chunk in _chunks(param_entries, 100):
        with_retries(lambda c=chunk: client.log_batch(run_id, params=c), "log params")
    for chunk in _chunks(entries, 1000):
        with_retries(lambda c=chunk: client.log_batch(run_id, metrics=c), "log metrics")
    with_retries(lambda: client.log_batch(run_id, tags=[RunTag("mlflow.source.name", "dvc")]),
                 "log tags")
    for path in artifacts:
        path = Path(path)
        if path.is_dir():
            with_retries(lambda p=path: client.log_artifacts(run_id, str(p), p.name),
                         f"log {path}")
        elif path.exists():
            with_retries(lambda p=path: client.log_artifact(run_id, str(p)), f"log {path}")
    with_retries(lambda: client.set_terminated(run_id), "finish run")
    print(f"mlflow: logged run {run_name or run_id} to {uri}")
    return run_id


def log_evaluation(params: Mapping[str, Any], history: list[dict], headline: Mapping[str, Any],
                   artifacts: Iterable[str | os.PathLike], dataset_sha256: str) -> str | None:
    """`log_pipeline_run` with the DVC experiment, baseline commit and dataset hash as tags."""
    return log_pipeline_run(params, history, headline, artifacts,
                            tags={"dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
                                  "dvc.baseline_rev": git_revision(),
                                  "dataset.sha256": dataset_sha256})
