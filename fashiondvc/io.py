"""Atomic file and directory writes: outputs appear complete or not at all."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Marks a temporary sibling: ``.<name>.tmp-<host>-<pid>-<random>``.
TMP_MARK = ".tmp-"


def _owner_tag() -> str:
    """``<host hash>-<pid>``: who owns a temporary sibling, so stale ones can be recognised."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:  # Linux: "pid (comm) state ..."; a zombie writes nothing more
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def remove_stale_tmp(path: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp-*`` siblings of ``path`` left by killed writers on this host.

    A sibling is stale when the process named in it no longer exists; live writers' siblings,
    other hosts' siblings and names in another format are left alone. Returns what was removed.
    """
    path = Path(path)
    host = _owner_tag().split("-")[0]
    removed = []
    for sibling in path.parent.glob(f".{glob.escape(path.name)}{TMP_MARK}*"):
        owner = sibling.name[len(path.name) + 1 + len(TMP_MARK):].split("-")
        if len(owner) < 3 or owner[0] != host or not owner[1].isdigit():
            continue
        if _pid_alive(int(owner[1])):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it onto ``path`` only if the block succeeds.

    A killed or failed writer leaves at most a ``.tmp-*`` sibling, never a half-written ``path``;
    siblings left by writers that were killed are removed by the next write to ``path``. An
    existing folder at ``path`` is renamed away before the new one is renamed in, so ``path`` is
    at every moment either the complete old output, absent, or the complete new output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}{_owner_tag()}-",
                                dir=path.parent))
    target = tmp if is_dir else tmp / path.name
    old = None
    try:
        yield target
        replacing = path.exists() or path.is_symlink()
        if replacing and (is_dir or (path.is_dir() and not path.is_symlink())):
            old = Path(f"{tmp}-old")  # rename away first: os.replace cannot overwrite a folder
            os.replace(path, old)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, strict JSON, atomically.

    NaN and infinities are not JSON (strict parsers, DVC Studio and browsers reject them): they
    are written as ``null``.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=False, allow_nan=False)
                       + "\n")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        return _finite(value.item())
    return value


def write_csv(path: str | os.PathLike, frame: Any) -> None:
    """Write a pandas DataFrame as CSV without its index, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: str | os.PathLike) -> str:
    """Size and modification time of a file: cheap to get, changes whenever it is rewritten."""
    stat = os.stat(path)
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def repo_path(path: str | os.PathLike) -> Path:
    """A user-given input path, relative paths taken from the user's repository.

    Queued and ``--temp`` DVC experiments run in a copy of the repository that holds only git-
    and DVC-tracked files; DVC sets ``DVC_ROOT`` to the user's repository. An input that is not
    tracked (a downloaded archive, a weights file, a photo folder, ``../`` paths) is found there.
    """
    path = Path(path).expanduser()
    root = os.environ.get("DVC_ROOT")
    if path.is_absolute() or not root or path.exists():
        return path
    return Path(root) / path


def walk_files(folder: str | os.PathLike, suffixes: tuple[str, ...] | None = None
               ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files under ``folder``, following symbolic links to files and to folders.

    The one collection rule (``search.images``: the index, its fingerprint, the server): a
    link is followed wherever it points, inside the folder or not. Each real folder is read
    once, so a link loop (a link to a parent) ends; each real file is listed once, under its
    first name in sorted order. Hidden files and folders (a name starting with ``.``) are left
    out; with ``suffixes``, only names ending in one of them (case-insensitive) count.

    Returns
    -------
    files : list of Path
        Sorted; each is ``folder`` joined with the path as found (links not resolved).
    left_out : list of (Path, str)
        Files not listed, each with the reason: a broken link, a second name of a file, a
        link loop, an unreadable folder.
    """
    folder = Path(folder)
    seen_folders: set[tuple[int, int]] = set()
    found: list[Path] = []
    left_out: list[tuple[Path, str]] = []

    def visit(directory: Path) -> None:
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen_folders:
                left_out.append((directory, "a link to a folder already read (a link loop or "
                                            "a second name): read once"))
                return
            seen_folders.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            left_out.append((directory, f"unreadable folder ({exc.strerror or exc})"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            wanted = not suffixes or path.suffix.lower() in suffixes
            try:
                if entry.is_dir():  # follows a link
                    visit(path)
                    continue
                if wanted and entry.is_file():
                    found.append(path)
                elif wanted and entry.is_symlink() and not path.exists():
                    left_out.append((path, f"a broken symbolic link (to {os.readlink(path)})"))
            except OSError as exc:  # a link loop on a file name (ELOOP), a vanished entry
                if wanted:
                    left_out.append((path, f"unreadable ({exc.strerror or exc})"))

    visit(folder)
    files, first_name = [], {}
    for path in sorted(found):
        info = path.stat()
        key = (info.st_dev, info.st_ino)
        if key in first_name:
            left_out.append((path, f"the same file as {first_name[key].relative_to(folder)}: "
                                   "listed once"))
            continue
        first_name[key] = path
        files.append(path)
    return files, left_out
