"""The one exception type user errors raise, and the wrapper that turns any failure into a clean
exit: one line on stderr, the full traceback of an unexpected one kept in a log file."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

#: Where `run_main` keeps the traceback of an unexpected failure, under the project root.
LOG_DIR = Path(".fashiondvc") / "logs"


class FashionError(Exception):
    """A user-facing error: bad input, bad parameter, failed download.

    The message is printed as one line, without a traceback, and the process exits non-zero.
    """


def run_main(main: Callable[[], None], name: str | None = None) -> None:
    """Call ``main``; on any failure print one ``error: ...`` line to stderr and exit non-zero.

    A user error (`FashionError`, or an `OSError`: a missing input, a full disk, no permission,
    whose message names the file) prints its message. Any other exception (a bug, or an input
    that a dependency refuses: numpy, scikit-learn, torch) prints one line naming ``name``, the
    exception, and a log file holding the full traceback (`crash_log`). Ctrl-C exits 130.
    Under torchrun only rank 0 prints; `fashiondvc.distributed.torchrun` prints the line of
    another rank that failed when rank 0 did not.

    Parameters
    ----------
    main : callable
    name : str, optional
        What failed, e.g. ``"fashiondvc search"``; default: the stage of the running script
        (``stages/train.py`` or ``python -m stages.train``: ``"stage train"``).
    """
    what = name or _script_name()
    try:
        main()
    except (FashionError, OSError) as exc:
        _report(f"error: {exc}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        _report(f"error: {what} failed unexpectedly: {describe(exc)}; full traceback in "
                f"{crash_log(what, exc)}")
        raise SystemExit(1) from None


#: Environment variable naming the folder where each torchrun rank leaves its error line
#: (``rank-<N>.txt``; set by `fashiondvc.distributed.torchrun`).
RANK_ERRORS = "FASHIONDVC_RANK_ERRORS"


def _report(line: str) -> None:
    """Print ``line`` to stderr, only on rank 0 under torchrun; every rank also leaves it in
    `RANK_ERRORS` for the launcher."""
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        print(line, file=sys.stderr)
    if folder := os.environ.get(RANK_ERRORS):
        with contextlib.suppress(OSError):
            (Path(folder) / f"rank-{rank}.txt").write_text(line + "\n")


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def log_folder() -> Path:
    """``<project>/.fashiondvc/logs``: the project is ``$DVC_ROOT`` (set by DVC for every stage,
    also for queued and ``--temp`` experiments, which run in a copy) or the working directory
    when it holds a ``dvc.yaml``; elsewhere ``$XDG_CACHE_HOME/fashiondvc/logs`` (default
    ``~/.cache``)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]) / LOG_DIR
    if Path("dvc.yaml").is_file():
        return Path.cwd() / LOG_DIR
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fashiondvc" / "logs"


def crash_log(what: str, exc: BaseException) -> Path:
    """Write ``exc``'s full traceback to ``<what>-<time>-<pid>.log`` in `log_folder` (git-ignored,
    no DVC output) and return its path, relative to the working directory when inside it; a
    temporary file where that folder cannot be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in what).strip("-") or "run"
    text = (f"{what} failed at {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
            f"command: {' '.join(sys.argv)}\nworking directory: {os.getcwd()}\n"
            f"python {sys.version.split()[0]} on {sys.platform}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    try:
        folder = log_folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{slug}-{stamp}-{os.getpid()}.log"
        path.write_text(text)
        with contextlib.suppress(ValueError):
            return path.resolve().relative_to(Path.cwd().resolve())
        return path
    except OSError:
        import tempfile

        handle, name = tempfile.mkstemp(prefix=f"fashiondvc-{slug}-", suffix=".log")
        with os.fdopen(handle, "w") as out:
            out.write(text)
        return Path(name)


def _script_name() -> str:
    """``stage <name>`` for ``stages/<name>.py`` (run as a script or with ``-m``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec is not None else ""
    if module.startswith("stages."):
        return f"stage {module.split('.', 1)[1]}"
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.parent.name == "stages":
        return f"stage {script.stem}"
    return script.stem if script is not None else "fashiondvc"
