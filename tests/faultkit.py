"""Helpers for the bad-input, fault and determinism tests.

- `run_stage` runs a stage script in this process exactly as ``python -m stages.<name> ARGS``
  would (``__main__``, ``sys.argv``, working directory), capturing its output and exit code; an
  exception that escapes `run_main` becomes a traceback in ``stderr``, as Python would print it.
  That keeps dozens of bad-input cases fast (no interpreter and torch start-up per case).
- `rewrite_zip` derives broken archives from the generated sample.
- `serve` runs a local HTTP server on 127.0.0.1 with scripted answers.
- ``tests/hang/sitecustomize.py`` parks a chosen stage at a fixed point (see `HANG_ENV`).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import BIN, FAST_PARAMS, PROJECT, make_repo, run, set_params

ROOT = "ClothingAttributeDataset"
HANG_DIR = Path(__file__).resolve().parent / "hang"


@dataclass
class StageResult:
    """Exit code and captured output of one stage run."""

    code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def run_stage(stage: str, *args: str | os.PathLike, cwd: Path) -> StageResult:
    """Run ``stages/<stage>.py`` in this process as its own ``python`` command would run it."""
    script = PROJECT / "stages" / f"{stage}.py"
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [str(script), *map(str, args)]
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # what Python itself would print before exiting 1
        err.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return StageResult(code, out.getvalue(), err.getvalue())


def leftovers(folder: Path) -> list[Path]:
    """``.tmp-*`` siblings left anywhere under ``folder``."""
    return sorted(p for p in folder.rglob("*.tmp-*"))


def assert_user_error(result: StageResult, *names: str, absent: tuple[Path, ...] = ()) -> str:
    """Non-zero exit, exactly one ``error:`` line naming ``names``, no traceback, no output.

    Returns the error line.
    """
    assert result.code != 0, f"expected failure, got exit 0:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.error_lines()
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    for path in absent:
        assert not path.exists(), f"{path} was left behind"
        if path.parent.exists():
            assert not leftovers(path.parent), leftovers(path.parent)
    return lines[0]


def workdir(path: Path, archive: Path, **overrides: object) -> Path:
    """A folder with this project's params.yaml set to FAST_PARAMS, ``archive`` and overrides."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "params.yaml", path / "params.yaml")
    set_params(path / "params.yaml", {**FAST_PARAMS, "data.archive": str(archive),
                                      "data.url": None, **overrides})
    return path


def rewrite_zip(source: Path, dest: Path, *, drop: Callable[[str], bool] = lambda name: False,
                replace: dict[str, bytes] | None = None,
                add: dict[str, bytes] | None = None) -> Path:
    """Copy a zip, dropping members, replacing their bytes (keyed by path under the root) or
    adding raw member names."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as out:
        for info in src.infolist():
            inner = info.filename[len(ROOT) + 1:]
            if drop(inner):
                continue
            out.writestr(info, replace.pop(inner, None) or src.read(info))
        for inner, data in replace.items():
            out.writestr(f"{ROOT}/{inner}", data)
        for name, data in (add or {}).items():
            out.writestr(zipfile.ZipInfo(name), data)
    return dest


def member(archive: Path, inner: str) -> bytes:
    """The bytes of ``<root>/<inner>`` in a sample zip."""
    with zipfile.ZipFile(archive) as src:
        return src.read(f"{ROOT}/{inner}")


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes, int | None]] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        status, body, claimed = self.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if claimed is None else claimed))
        self.end_headers()
        self.wfile.write(body)  # a claimed length above len(body): the body is cut short
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(routes: dict[str, tuple[int, bytes, int | None]]) -> Iterator[str]:
    """Serve ``{path: (status, body, claimed Content-Length or None)}`` on 127.0.0.1; yield the
    base URL."""
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Results compared between runs: metrics, per-attribute table and training history.
RESULT_FILES = ("metrics/metrics.json", "metrics/per_attribute.csv", "metrics/history.csv")


def results(repo: Path) -> dict[str, bytes]:
    """The bytes of `RESULT_FILES`."""
    return {name: (repo / name).read_bytes() for name in RESULT_FILES}


def repro_env(**extra: str) -> dict[str, str]:
    """Environment for `run` / Popen: this interpreter first on PATH, analytics off."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", **extra}


def repro_until_hang(repo: Path, stage: str, timeout: float = 180.0,
                     sig: signal.Signals = signal.SIGKILL,
                     command: tuple[str, ...] = ("dvc", "repro")) -> str:
    """Start ``dvc repro`` in its own process group, wait until ``stage`` is parked at its hang
    point (tests/hang/sitecustomize.py), send the whole group ``sig`` (SIGKILL; SIGINT is
    Ctrl-C), and SIGKILL what is left after 30 s; return dvc's output. ``command`` may be
    another DVC command that runs the pipeline (``dvc exp run``)."""
    marker = repo.parent / f"hang-{stage}"
    marker.unlink(missing_ok=True)
    env = repro_env(FASHIONDVC_TEST_HANG=stage, FASHIONDVC_TEST_HANG_MARKER=str(marker),
                    PYTHONPATH=os.pathsep.join(filter(None, [str(HANG_DIR),
                                                             os.environ.get("PYTHONPATH")])))
    env.pop("MLFLOW_TRACKING_URI", None)
    log = repo.parent / f"repro-{stage}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(list(command), cwd=repo, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"dvc repro ended ({proc.returncode}) before {stage} "
                                     f"hung:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"{stage} never hung:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        stage_pid = int(marker.read_text())
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert wait_dead(stage_pid), f"stage process {stage_pid} survived the kill"
    return log.read_text()


def wait_dead(pid: int, timeout: float = 15.0) -> bool:
    """Whether ``pid`` is gone (or a zombie: dead, not yet reaped) within ``timeout``."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


#: The end-to-end runs: FAST_PARAMS on a sample with one truncated photo, skipped.
REFERENCE_PARAMS = {"data.on_corrupt": "skip"}
_SESSION: dict[str, Path] = {}


def reference_archive(factory) -> Path:
    """The 24-photo sample with photo 5 truncated (same bytes in every session)."""
    if "archive" not in _SESSION:
        from fashiondvc.sample import make_sample_archive

        folder = factory.mktemp("reference-archive")
        sample = make_sample_archive(folder / "sample.zip", n_images=24)
        jpeg = member(sample, "images/000005.jpg")
        _SESSION["archive"] = rewrite_zip(sample, folder / "one-truncated.zip",
                                          replace={"images/000005.jpg": jpeg[:len(jpeg) // 2]})
    return _SESSION["archive"]


def reference_repo(factory) -> Path:
    """One uninterrupted ``dvc repro`` of the reference setup, shared by every test module of
    the session (a session fixture defined in each module would run once per module); its
    output is in `reference_output`. Tests read it; one that changes things works on a copy."""
    if "repo" not in _SESSION:
        repo = make_repo(factory.mktemp("reference") / "repo", reference_archive(factory),
                         **REFERENCE_PARAMS)
        done = run(["dvc", "repro"], repo)
        _SESSION["first_run"], _SESSION["first_run_stderr"] = done.stdout, done.stderr
        _SESSION["repo"] = repo
    return _SESSION["repo"]


def reference_output(factory, stream: str = "stdout") -> str:
    """What the reference ``dvc repro`` printed on ``stream`` (stdout or stderr)."""
    reference_repo(factory)
    return _SESSION["first_run" if stream == "stdout" else "first_run_stderr"]
