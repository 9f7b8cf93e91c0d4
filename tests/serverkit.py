"""Throw-away servers on 127.0.0.1 for the slow tests: a PostgreSQL cluster, an MLflow server.

Both live in a fresh folder under the system temp dir (not pytest's ``tmp_path``: when the tests
run as root, PostgreSQL runs as the ``postgres`` user, which cannot enter root's 0700 pytest
folders). Each context manager stops its server and removes the folder on exit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


class TrackingServer(NamedTuple):
    """A running MLflow server: its URL, its backend store URI, its artifact destination."""

    url: str
    backend_store_uri: str
    artifacts: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: ``$PG_BIN``, ``PATH``, or Debian's newest.

    Raises
    ------
    FileNotFoundError
        When no PostgreSQL server binaries are installed.
    """
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent  # /usr/local/bin/initdb may link to Debian's
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                    else 0)
    if debian:
        return debian[-1].parent
    raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                            "install Debian's `postgresql` or set PG_BIN")


def _unprivileged(command: list[str]) -> list[str]:
    """``command`` run as ``postgres`` when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _scratch(prefix: str) -> Path:
    """A fresh folder that the user running PostgreSQL owns."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    return folder


def _check(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


@contextmanager
def postgres_cluster(database: str = "mlflow", user: str = "mlflow") -> Iterator[str]:
    """Run a throw-away PostgreSQL cluster on 127.0.0.1 holding one empty database.

    ``initdb`` with password (SCRAM) authentication, ``pg_ctl start`` listening on 127.0.0.1
    only, its unix socket in the cluster's folder, then ``createdb``.

    Yields
    ------
    str
        The SQLAlchemy URI, ``postgresql+psycopg://<user>:<password>@127.0.0.1:<port>/<database>``.
    """
    pg = postgres_bin()
    base = _scratch("fashiondvc-pg-")
    data, password = base / "data", secrets.token_hex(16)
    pwfile = base / "password"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    started = False
    try:
        _check(_unprivileged([str(pg / "initdb"), "-D", str(data), "-U", user,
                              "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                              "--locale=C"]))
        options = f"-c listen_addresses={LOOPBACK} -p {port} -k {base}"
        _check(_unprivileged([str(pg / "pg_ctl"), "-D", str(data), "-l", str(base / "log"),
                              "-o", options, "-w", "-t", "60", "start"]))
        started = True
        env = {**os.environ, "PGPASSWORD": password}
        _check([str(pg / "createdb"), "-h", LOOPBACK, "-p", str(port), "-U", user, database],
               env=env)
        yield f"postgresql+psycopg://{user}:{password}@{LOOPBACK}:{port}/{database}"
    finally:
        if started:
            subprocess.run(_unprivileged([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast",
                                          "-w", "stop"]), capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc``'s process group (its workers too), SIGKILL it after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mlflow_server(backend_store_uri: str, timeout: float = 300) -> Iterator[tuple[str, Path]]:
    """Run ``mlflow server`` on 127.0.0.1 with served artifacts, until the block exits.

    Parameters
    ----------
    backend_store_uri : str
        Where runs live (``postgresql://...``).
    timeout : float
        Seconds to wait for ``/health`` (the first start creates MLflow's tables).

    Yields
    ------
    (str, Path)
        The server's URL (``http://127.0.0.1:<port>``) and its artifact destination folder.

    Raises
    ------
    RuntimeError
        When the server exits or is not healthy within ``timeout``; the message holds its log.
    """
    base = Path(tempfile.mkdtemp(prefix="fashiondvc-mlflow-"))
    artifacts, log_path = base / "artifacts", base / "server.log"
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", str(artifacts),
               "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    try:
        with _running(command, base, os.environ, log_path, url, "/health", timeout,
                      "mlflow server"):
            yield url, artifacts
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def _running(command: list[str], cwd: Path, env, log_path: Path, url: str, probe: str,
             timeout: float, name: str) -> Iterator[None]:
    """Run ``command`` (the venv's bin first on PATH) in its own session, logging to
    ``log_path``, until ``url + probe`` answers 200; stop its process group when the block
    exits. RuntimeError with the log's tail when it exits or does not answer in ``timeout``."""
    full_env = {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(log_path, "w") as log:
        # its own session: servers fork workers, and the whole group is stopped at the end
        proc = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url + probe):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come up at {url} "
                                   f"(exit code {proc.poll()}):\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield
    finally:
        _stop_group(proc)


@contextmanager
def model_server(model_uri: str, cwd: Path, env: dict[str, str] | None = None,
                 timeout: float = 300) -> Iterator[tuple[str, Path]]:
    """Run ``mlflow models serve -m <model_uri> --env-manager local`` on 127.0.0.1 until the
    block exits (its process group is stopped then).

    Yields
    ------
    (str, Path)
        The server's URL and its log file (stdout and stderr).

    Raises
    ------
    RuntimeError
        When the server exits or does not answer ``/ping`` within ``timeout``.
    """
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log_path = cwd / f"models-serve-{port}.log"
    command = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
               "local", "-h", LOOPBACK, "-p", str(port)]
    with _running(command, cwd, {**os.environ, **(env or {})}, log_path, url, "/ping", timeout,
                  "mlflow models serve"):
        yield url, log_path
