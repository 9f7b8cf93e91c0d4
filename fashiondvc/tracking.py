"""MLflow tracking: one live run per pipeline run, opened by train and ended by evaluate.

The store is SQLite at ``<DVC_ROOT>/mlflow.db`` with artifacts in ``<DVC_ROOT>/mlartifacts``.
DVC sets ``DVC_ROOT`` to the user's repository even for queued and ``--temp`` experiments, which
run in a copy under ``.dvc/tmp/exps``, so every run lands in the user's store.
``MLFLOW_TRACKING_URI`` overrides it.

Life of a run (named ``$DVC_EXP_NAME``, or ``workspace@<commit>`` for a plain ``dvc repro``):

1. ``train`` opens it (`start_live_run`): params and tags at once, each epoch's curves as the
   epoch ends; when the model is saved it tags the run with the model file's sha256
   (`LiveRun.handover`).
2. ``evaluate`` (`log_evaluation`) adopts the RUNNING run of the same name, project root and
   model sha256, adds metrics, artifacts and the logged model, and ends it. When no such run
   exists (``train`` restored from DVC's run cache, or its tracking failed) it opens a fresh
   run and logs the curves from ``history.csv``. Nothing is handed over through the workspace,
   so a restored ``train`` output can never point evaluate at an older pipeline run.
3. Other RUNNING runs of the same name and root are orphans of killed pipelines: they are
   marked FAILED.

Tracking never breaks a pipeline run: every call is retried with backoff; when a call still
fails after the run exists, the run is marked FAILED (best effort) and a warning says how to
log it again (``fashiondvc track``, `relog`). First use of a SQLite store (creating and
migrating its schema) is serialised across processes by a file lock next to the database, so
concurrent queue workers never race Alembic migrations.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

EXPERIMENT = "fashiondvc"
#: Tag holding the sha256 of the model file a run was trained into.
MODEL_TAG = "fashiondvc.model_sha256"
#: Tag holding the project root (two clones of one repository never adopt each other's runs).
ROOT_TAG = "fashiondvc.root"
#: Tag holding the one-line error of a run that failed in a stage.
ERROR_TAG = "fashiondvc.error"
#: How long a process waits for another one to finish creating the SQLite schema.
LOCK_TIMEOUT_S = 600
T = TypeVar("T")


def project_root() -> Path:
    """The user's DVC repository: ``$DVC_ROOT`` when DVC runs us, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, or SQLite in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_location(subfolder: str = "") -> str | None:
    """Where a new experiment keeps its artifacts: ``<DVC_ROOT>/mlartifacts[/subfolder]`` for
    the local SQLite store; None (the server's own ``mlflow-artifacts:`` root, so that every
    client can download them) for a tracking server."""
    if sqlite_path(tracking_uri()) is None:
        return None
    return (project_root() / "mlartifacts" / subfolder).as_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):].split("?")[0]) if uri.startswith(prefix) else None


def ui_address(uri: str, experiment_id: str, run_id: str) -> str:
    """Where to see a run: the server's page, or the ``mlflow ui`` command for a local store."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"`mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/{page}"


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
                              check=True, cwd=project_root()).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_name() -> str:
    """The DVC experiment's name, or ``workspace@<commit>`` for a plain ``dvc repro``."""
    return os.environ.get("DVC_EXP_NAME") or f"workspace@{git_revision()[:7]}"


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------- the store


def store_lock() -> contextlib.AbstractContextManager:
    """A lock across processes on this machine for the SQLite store (``<database>-lock``,
    `LOCK_TIMEOUT_S`), for check-then-create steps that must not run twice at once; a no-op
    for a tracking server (its clients are on other machines)."""
    database = sqlite_path(tracking_uri())
    if database is None:
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(f"{database}-lock", timeout=LOCK_TIMEOUT_S)


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """Within the block, MLflow's artifact downloads print no "Downloading artifacts" tqdm bar
    (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``, read by MLflow at each download); the
    variable is restored afterwards, so a caller's process keeps its own setting."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def open_client():
    """An ``MlflowClient`` whose store exists with its current schema.

    With SQLite, the first use creates and migrates the schema (Alembic); concurrent first uses
    corrupt it ("Online migration expected to match one row", "table _alembic_tmp_runs already
    exists"), so opening the tracking and registry stores is serialised by a ``filelock`` on
    ``<database>-lock``, and retried like every other call.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's HTTP client retries 5 times with a 120 s timeout by default (minutes against a
    # dead server); `with_retries` already retries each call, so keep MLflow's own loop short.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    _quiet_store()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    database = sqlite_path(uri)

    def ready() -> MlflowClient:
        # the constructor already opens (creates, migrates) the tracking store
        with store_lock():
            if database is not None:
                follow_moved_repository(database)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            if database is not None:
                client.search_registered_models(max_results=1)  # registry schema, same file
        return client

    return with_retries(ready, "open the store")


#: Where MLflow's SQLite schema keeps artifact locations (table, column).
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("model_versions", "source"), ("model_versions", "storage_location"),
                     ("logged_models", "artifact_location"))


def follow_moved_repository(database: Path) -> list[tuple[Path, Path]]:
    """Point the default store's artifact locations at this repository after it moved.

    The default store (``<root>/mlflow.db``) records absolute ``file://<root>/mlartifacts/...``
    locations (MLflow resolves every local artifact path to an absolute one). After ``mv repo
    repo2`` they name the old folder: every model version fails to load and the next run
    recreates the old folder. When the database is this repository's ``mlflow.db`` and a
    location is under ``<old>/mlartifacts`` with ``<old>`` another folder whose
    ``mlartifacts`` is gone (moved) or with this repository holding its own ``mlartifacts``
    (copied along), the locations of experiments, runs, model versions and logged models, and
    the runs' `ROOT_TAG`, are rewritten to this repository, in one SQLite transaction; one
    line says so. Returns the ``(old, new)`` roots rewritten. A store named by
    ``MLFLOW_TRACKING_URI`` elsewhere is left alone.
    """
    import sqlite3

    root = project_root()
    if not database.is_file() or database.resolve() != (root / "mlflow.db").resolve():
        return []
    try:
        moved = _rewrite_locations(database, root)
    except sqlite3.Error:  # locked by a long writer, or not MLflow's schema: next time
        return []
    for old, new in moved:
        print(f"mlflow: the repository moved from {old} to {new}: the store's artifact "
              f"locations now point at {new / 'mlartifacts'}", file=sys.stderr)
    return moved


def _rewrite_locations(database: Path, root: Path) -> list[tuple[Path, Path]]:
    import sqlite3
    from urllib.parse import unquote, urlparse

    with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master "
                                               "where type = 'table'")}
        if "experiments" not in tables:
            return []
        olds = set()
        for (location,) in db.execute("select artifact_location from experiments"):
            if not (location or "").startswith("file://"):
                continue
            parts = Path(unquote(urlparse(location).path)).parts
            if "mlartifacts" not in parts:
                continue
            old = Path(*parts[:parts.index("mlartifacts")])
            if old != root and (not (old / "mlartifacts").exists()
                                or (root / "mlartifacts").exists()):
                olds.add(old)
        moved = []
        with db:  # one transaction
            for old in sorted(olds):
                prefixes = [((old / "mlartifacts").as_uri(), (root / "mlartifacts").as_uri()),
                            (str(old / "mlartifacts"), str(root / "mlartifacts"))]
                for table, column in _LOCATION_COLUMNS:
                    if table not in tables:
                        continue
                    columns = {row[1] for row in db.execute(f"pragma table_info({table})")}
                    if column not in columns:
                        continue
                    for rowid, value in db.execute(
                            f"select rowid, {column} from {table}").fetchall():
                        for before, after in prefixes:
                            if value and (value == before or value.startswith(before + "/")):
                                db.execute(f"update {table} set {column} = ? where rowid = ?",
                                           (after + value[len(before):], rowid))
                                break
                if "tags" in tables:
                    db.execute("update tags set value = ? where key = ? and value = ?",
                               (str(root), ROOT_TAG, str(old)))
                moved.append((old, root))
    return moved


def _quiet_store() -> None:
    """Keep the store's housekeeping off the user's stderr: MLflow's INFO lines on creating
    the SQLite tables, Alembic's migration steps, and SQLAlchemy's deprecation warning about
    MLflow's own ``noload`` option (nothing a user can act on)."""
    import logging
    import warnings

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*``noload`` loader strategy is deprecated")


def experiment_id(client) -> str:
    """The id of experiment `EXPERIMENT`, created (artifacts in `artifact_location`) if needed,
    restored if it was deleted (`active_experiment`)."""
    return active_experiment(client, EXPERIMENT, artifact_location())


def active_experiment(client, name: str, location: str | None) -> str:
    """The id of the active experiment ``name``: found, restored or created.

    An experiment deleted in the MLflow UI keeps its name (in the trash) and takes no new run;
    it is restored, with one line saying so. A missing one is created with artifacts in
    ``location``."""
    def get_or_create() -> str:
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return client.create_experiment(name, artifact_location=location)
            except Exception:
                found = client.get_experiment_by_name(name)  # created meanwhile by a sibling
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
            print(f"mlflow: experiment {name!r} ({found.experiment_id}) had been deleted (in "
                  "the MLflow UI?): restored it, with its runs", file=sys.stderr)
        return found.experiment_id

    return with_retries(get_or_create, f"open experiment {name!r}")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _project_runs(client, exp_id: str, name: str | None, status: str = "= 'RUNNING'",
                  extra: str = "", max_results: int = 100) -> list:
    """Runs of this project root named ``name`` (any name: None) whose status matches
    ``status`` (an MLflow filter comparison, e.g. ``!= 'FINISHED'``), plus an extra clause."""
    named = "" if name is None else f"attributes.run_name = {_quote(name)} and "
    query = (f"{named}attributes.status {status} "
             f"and tags.`{ROOT_TAG}` = {_quote(str(project_root()))}{extra}")
    return with_retries(lambda: client.search_runs([exp_id], query, max_results=max_results),
                        "search runs")


# --------------------------------------------------------------------------- one run


class TrackedRun:
    """One MLflow run being written; every call retried (`with_retries`).

    Parameters
    ----------
    client : MlflowClient
    experiment_id, run_id, name : str
    """

    def __init__(self, client, experiment_id: str, run_id: str, name: str):
        self.client, self.experiment_id, self.run_id, self.name = (
            client, experiment_id, run_id, name)

    @classmethod
    def create(cls, client, exp_id: str, name: str, tags: Mapping[str, str]) -> TrackedRun:
        tags = {**tags, ROOT_TAG: str(project_root()), "mlflow.source.name": "dvc"}
        run = with_retries(lambda: client.create_run(exp_id, run_name=name, tags=tags),
                           "create run")
        return cls(client, exp_id, run.info.run_id, name)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)) for key, value in params.items()]
        for chunk in _chunks(entries, 100):
            with_retries(lambda c=chunk: self.client.log_batch(self.run_id, params=c),
                         "log params")

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, prefix: str = "") -> None:
        """Finite numeric values of ``metrics`` at ``step`` (None and NaN left out)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(prefix + key, float(value), now, step) for key, value in metrics.items()
                   if _finite(value)]
        for chunk in _chunks(entries, 1000):
            with_retries(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c),
                         "log metrics")

    def log_history(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Per-epoch rows as ``epoch_<column>`` curves, step = epoch.

        The prefix keeps them off the final train/test losses, which are measured differently
        (eval mode, whole set).
        """
        for row in rows:
            self.log_metrics({k: v for k, v in row.items() if k != "epoch"},
                             step=int(row["epoch"]), prefix="epoch_")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, str(value)) for key, value in tags.items()]
        with_retries(lambda: self.client.log_batch(self.run_id, tags=entries), "log tags")

    def log_artifacts(self, paths: Iterable[str | os.PathLike]) -> None:
        for path in map(Path, paths):
            if path.is_dir():
                with_retries(lambda p=path: self.client.log_artifacts(self.run_id, str(p),
                                                                      p.name), f"log {path}")
            elif path.exists():
                with_retries(lambda p=path: self.client.log_artifact(self.run_id, str(p)),
                             f"log {path}")

    def finish(self, status: str = "FINISHED") -> None:
        with_retries(lambda: self.client.set_terminated(self.run_id, status), "end run")

    def fail(self, status: str = "FAILED", reason: str | None = None) -> bool:
        """End the run as ``status`` (FAILED, or KILLED) with one quick attempt, with ``reason``
        as tag ``fashiondvc.error``; whether that worked (never raises)."""
        from mlflow.entities import RunTag

        try:
            if reason:
                with_retries(lambda: self.client.log_batch(
                    self.run_id, tags=[RunTag(ERROR_TAG, reason[:5000])]), "tag the error",
                    attempts=2)
            with_retries(lambda: self.client.set_terminated(self.run_id, status),
                         f"mark run {status}", attempts=2)
            return True
        except Exception:
            return False

    def fail_orphans(self) -> None:
        """Mark FAILED the other RUNNING runs of this name and root (killed pipelines)."""
        for run in _project_runs(self.client, self.experiment_id, self.name):
            if run.info.run_id != self.run_id:
                with_retries(lambda r=run: self.client.set_terminated(r.info.run_id, "FAILED"),
                             "mark an orphan run FAILED")

    def delete_unfinished(self) -> None:
        """Delete the RUNNING and FAILED runs of this name and root (replaced by this one)."""
        for run in _project_runs(self.client, self.experiment_id, self.name,
                                 status="!= 'FINISHED'", max_results=1000):
            if run.info.run_id != self.run_id:
                with_retries(lambda r=run: self.client.delete_run(r.info.run_id),
                             "delete a replaced run")
                print(f"mlflow: deleted unfinished run {run.info.run_id} ({run.info.status})")

    def address(self) -> str:
        return ui_address(tracking_uri(), self.experiment_id, self.run_id)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _warn(exc: Exception, run: TrackedRun | None) -> None:
    """The one warning line of a failed tracking attempt, with what happened to the run."""
    message = (f"WARNING: MLflow tracking failed, the pipeline goes on without it: "
               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if run is not None:
        state = "marked FAILED" if run.fail() else "left unfinished"
        message += (f"; run {run.name!r} ({run.run_id}) {state}: log it again from the "
                    f"stage outputs with `fashiondvc track`")
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------- train


def _tags(dataset_sha256: str | None) -> dict[str, str]:
    tags = {"dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
            "dvc.baseline_rev": git_revision()}
    if dataset_sha256:
        tags["dataset.sha256"] = dataset_sha256
    return tags


class LiveRun:
    """The run the train stage writes while it trains (see the module docstring).

    After the first failed call it stops logging, marks the run FAILED and warns; evaluate then
    logs a fresh run from ``history.csv``.
    """

    def __init__(self, run: TrackedRun):
        self.run: TrackedRun | None = run
        self.logged: set[int] = set()

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Log one history row (``epoch`` plus metric columns) as it is computed."""
        if self.run is None:
            return
        try:
            self.run.log_history([row])
            self.logged.add(int(row["epoch"]))
        except Exception as exc:
            _warn(exc, self.run)
            self.run = None

    def fail(self, exc: BaseException) -> None:
        """The train stage failed with ``exc``: end the run FAILED (KILLED for Ctrl-C), the
        error's first line as tag `ERROR_TAG`; best effort, never raises."""
        if self.run is not None:
            end_failed(self.run, exc)
            self.run = None

    def handover(self, history: list[Mapping[str, Any]], model_path: str | os.PathLike) -> None:
        """After the model is saved: log epochs not logged yet (resumed from a checkpoint) and
        the ``selected`` column, then tag the run with the model's sha256 for evaluate."""
        if self.run is None:
            return
        from fashiondvc.io import sha256_file

        try:
            self.run.log_history([row if int(row["epoch"]) not in self.logged
                                  else {"epoch": row["epoch"], "selected": row["selected"]}
                                  for row in history if "selected" in row
                                  or int(row["epoch"]) not in self.logged])
            self.run.set_tags({MODEL_TAG: sha256_file(model_path)})
        except Exception as exc:
            _warn(exc, self.run)
            self.run = None


def start_live_run(params: Mapping[str, Any], dataset_sha256: str | None = None
                   ) -> LiveRun | None:
    """Open this pipeline run's MLflow run as training starts; None if tracking is unavailable.

    Only the process of rank 0 (``$RANK``, set by torchrun) tracks. Earlier RUNNING runs of
    the same name and project root (pipelines killed before evaluate) are marked FAILED.

    Parameters
    ----------
    params : mapping
        Flattened ``params.yaml``, logged as params at once.
    dataset_sha256 : str, optional
        The archive's hash, logged as tag ``dataset.sha256``.
    """
    if os.environ.get("RANK", "0") != "0":
        return None
    run = None
    try:
        client = open_client()
        exp_id = experiment_id(client)
        run = TrackedRun.create(client, exp_id, run_name(), _tags(dataset_sha256))
        run.fail_orphans()
        run.log_params(params)
    except Exception as exc:
        _warn(exc, run)
        return None
    print(f"mlflow: run {run.name!r} ({run.run_id}) is live: {run.address()}")
    return LiveRun(run)


def end_failed(run: TrackedRun, exc: BaseException) -> None:
    """End ``run`` because its stage raised ``exc``: KILLED for Ctrl-C, else FAILED."""
    from fashiondvc.errors import FashionError, describe

    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    reason = str(exc) if isinstance(exc, FashionError) else describe(exc, limit=5000)
    if not run.fail(status, reason):
        print(f"WARNING: MLflow: could not mark run {run.name!r} ({run.run_id}) {status}",
              file=sys.stderr)


# --------------------------------------------------------------------------- evaluate


def fail_evaluation(params: Mapping[str, Any], model_path: str | os.PathLike,
                    exc: BaseException) -> None:
    """The evaluate stage failed with ``exc``: end FAILED the RUNNING run that train opened for
    this model (`_adoptable`), if any. Best effort: never raises."""
    if os.environ.get("RANK", "0") != "0" or not Path(model_path).is_file():
        return
    try:
        from fashiondvc.io import sha256_file

        client = open_client()
        exp_id = experiment_id(client)
        flat = {key: str(value) for key, value in params.items()}
        run = _adoptable(client, exp_id, run_name(), sha256_file(model_path), flat)
    except Exception:
        return
    if run is not None:
        end_failed(run, exc)


def _adoptable(client, exp_id: str, name: str, model_sha256: str,
               params: Mapping[str, str]) -> TrackedRun | None:
    """The RUNNING run that this pipeline's train stage opened for this very model, if any.

    Matched by project root, model sha256 and params, not by ``name``: a workspace run's name
    holds the commit, which a commit made while it trained would change; the run keeps the
    name train gave it."""
    candidates = _project_runs(client, exp_id, None,
                               extra=f" and tags.`{MODEL_TAG}` = {_quote(model_sha256)}")
    for found in sorted(candidates, key=lambda r: r.info.start_time, reverse=True):
        if found.data.params == params:
            return TrackedRun(client, exp_id, found.info.run_id, found.info.run_name or name)
    return None


def stage_artifacts(metrics_dir: str | os.PathLike) -> list[Path]:
    """Every file and folder the pipeline writes to ``metrics_dir`` (metrics, curves, plots)."""
    folder = Path(metrics_dir)
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) \
        if folder.is_dir() else []


def log_evaluation(params: Mapping[str, Any], history: list[dict], headline: Mapping[str, Any],
                   artifacts: Iterable[str | os.PathLike], dataset_sha256: str,
                   model_path: str | os.PathLike | None = None,
                   log_model: Callable[[TrackedRun], None] | None = None, *,
                   replace: bool = False) -> str | None:
    """Complete and end this pipeline run's MLflow run; return its id, or None on failure.

    Parameters
    ----------
    params : mapping
        Flattened ``params.yaml``.
    history : list of dict
        Per-epoch rows (``epoch`` plus metric columns), logged when the run is new.
    headline : mapping
        Final metrics (None and NaN values are left out).
    artifacts : iterable of paths
        Files or folders to attach (metrics, plots, weights).
    dataset_sha256 : str
        The archive's hash (tag ``dataset.sha256``).
    model_path : path, optional
        The trained model; its sha256 finds the run train opened (`start_live_run`).
    log_model : callable, optional
        Called with the run before it ends, e.g. to log and register the model.
    replace : bool
        Never adopt a run; once the new run is FINISHED, delete the unfinished (RUNNING or
        FAILED) runs of the same name and project root (`relog`).
    """
    run = None
    try:
        from fashiondvc.io import sha256_file

        client = open_client()
        exp_id = experiment_id(client)
        name = run_name()
        flat = {key: str(value) for key, value in params.items()}
        model_sha = sha256_file(model_path) if model_path and Path(model_path).exists() else ""
        run = (_adoptable(client, exp_id, name, model_sha, flat)
               if model_sha and not replace else None)
        if run is None:
            run = TrackedRun.create(client, exp_id, name, _tags(dataset_sha256))
            run.log_params(flat)
            run.log_history(history)
            if model_sha:
                run.set_tags({MODEL_TAG: model_sha})
        else:
            run.set_tags(_tags(dataset_sha256))
        run.log_metrics(headline)
        run.log_artifacts(artifacts)
        if log_model is not None:
            log_model(run)
        run.finish()
    except Exception as exc:
        _warn(exc, run)
        return None
    try:
        if replace:
            run.delete_unfinished()
        run.fail_orphans()
    except Exception as exc:  # the run itself is complete
        print(f"WARNING: MLflow: could not mark orphan runs FAILED ({exc})", file=sys.stderr)
    print(f"mlflow: logged run {run.name!r} ({run.run_id}): {run.address()}")
    return run.run_id


def relog(metrics_dir: str | os.PathLike = "metrics", model_path: str | os.PathLike =
          "models/net.pt", manifest: str | os.PathLike = "data/ingested/manifest.json",
          log_model: Callable[[TrackedRun], None] | None = None) -> str | None:
    """Log the workspace's pipeline outputs as one FINISHED run (``fashiondvc track``).

    For a run that evaluate could not complete (marked FAILED, or left RUNNING when even that
    failed): reads ``params.yaml``, ``<metrics_dir>/metrics.json`` and ``history.csv``, the
    dataset hash from ``manifest``, logs a fresh run named as the pipeline run was
    (``$DVC_EXP_NAME`` or ``workspace@<commit>``) and deletes the unfinished runs of that name.
    Does nothing but say so when a FINISHED run of that name already holds this model.

    Raises
    ------
    FashionError
        If a stage output is missing (run the pipeline first).
    """
    import json

    import pandas as pd

    from fashiondvc.errors import FashionError
    from fashiondvc.io import sha256_file
    from fashiondvc.params import load_params

    folder = Path(metrics_dir)
    needed = [folder / "metrics.json", folder / "history.csv", Path(model_path), Path(manifest)]
    for path in needed:
        if not path.exists():
            raise FashionError(f"{path} does not exist: run the pipeline (dvc repro) first")
    client = open_client()
    exp_id = experiment_id(client)
    name = run_name()
    done = _project_runs(client, exp_id, name, status="= 'FINISHED'", max_results=1,
                         extra=f" and tags.`{MODEL_TAG}` = {_quote(sha256_file(model_path))}")
    if done:
        print(f"mlflow: run {name!r} ({done[0].info.run_id}) is already logged: "
              f"{ui_address(tracking_uri(), exp_id, done[0].info.run_id)}")
        return done[0].info.run_id
    return log_evaluation(
        load_params().flat(), pd.read_csv(folder / "history.csv").to_dict("records"),
        json.loads((folder / "metrics.json").read_text()), stage_artifacts(folder),
        json.loads(Path(manifest).read_text())["archive_sha256"], model_path, log_model,
        replace=True)
