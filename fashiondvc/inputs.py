"""The pipeline's inputs from outside the repository, and content fingerprints DVC can compare.

``data.archive``, a ``model.weights`` file and a ``search.images`` folder are paths in
``params.yaml``: DVC sees the path, not the bytes, so a file replaced in place would leave every
result cached. The ``inputs`` stage (``always_changed``, about a second) resolves each input,
downloads the archive if it is absent, and writes one small JSON file per input holding its
content hash. Stages depend on those files, so they rerun exactly when an input's content
changes, and not when it is merely touched.

Relative paths are taken from the user's repository (`fashiondvc.io.repo_path`), so queued and
``--temp`` experiments find inputs that git does not track.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fashiondvc.errors import FashionError
from fashiondvc.io import atomic_path, repo_path, sha256_file, walk_files, write_json
from fashiondvc.preprocess import IMAGE_SUFFIXES


def fingerprint_folder(folder: str | os.PathLike, suffixes: tuple[str, ...] | None = None
                       ) -> dict:
    """``{"files": n, "sha256": ...}`` over every (relative path, content sha256) under ``folder``.

    The files are those `fashiondvc.io.walk_files` lists, the ones the index reads: symbolic
    links followed, each real file once, hidden files and folders ignored; with ``suffixes``,
    only files ending in one of them (case-insensitive) count.
    """
    folder = Path(folder)
    digest, count = hashlib.sha256(), 0
    for path in walk_files(folder, suffixes)[0]:
        relative = path.relative_to(folder)
        # surrogateescape: a file name that is not valid UTF-8 (an old archive's Latin-1)
        # hashes as its bytes on disk
        digest.update(f"{relative.as_posix()}\0{sha256_file(path)}\n".encode(
            "utf-8", "surrogateescape"))
        count += 1
    return {"files": count, "sha256": digest.hexdigest()}


def fingerprint_path(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> dict:
    """The content fingerprint of a file (its sha256) or a folder (`fingerprint_folder`)."""
    path = Path(path)
    if path.is_dir():
        return {"kind": "folder", **fingerprint_folder(path, suffixes)}
    if path.is_file():
        return {"kind": "file", "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    raise FashionError(f"{path} does not exist")


def archive_fingerprint(archive: str, url: str | None, sha256: str | None) -> dict:
    """Resolve ``data.archive`` (downloading it from ``data.url`` if absent) and fingerprint it."""
    from fashiondvc.dataset import download

    path = repo_path(archive)
    if not path.exists():
        if not url:
            raise FashionError(f"data.archive: {archive} does not exist and data.url is empty")
        print(f"{path} not found: downloading {url}")
        try:
            download(url, path, sha256)
        except FashionError as exc:  # offline, a moved URL...: say where we looked, and both fixes
            raise FashionError(f"data.archive: {path} not found, and {exc}; put the archive "
                               "there, or set data.archive to where it is") from None
    return {"archive": archive, **fingerprint_path(path)}


def weights_fingerprint(weights: str) -> dict:
    """``model.weights``: a file's content hash. ``imagenet`` and ``random`` stand for
    themselves: the backbone (a parameter of featurize) and its code (a dependency) say which
    weights they are."""
    if weights in ("imagenet", "random"):
        return {"weights": weights}
    return {"weights": weights, **fingerprint_path(repo_path(weights))}


def photos_fingerprint(images: str | None) -> dict:
    """``search.images``: the photos of the folder (null: the ingested photos, tracked by DVC)."""
    if images is None:
        return {"images": None}
    folder = repo_path(images)
    if not folder.is_dir():
        raise FashionError(f"search.images: {images} is not a folder")
    return {"images": images, **fingerprint_folder(folder, IMAGE_SUFFIXES)}


def write_fingerprints(params, out_dir: str | os.PathLike) -> dict[str, dict]:
    """Write ``archive.json``, ``weights.json`` and ``photos.json`` to ``out_dir``; return them.

    ``params`` is the validated `fashiondvc.params.Params`.
    """
    data = params.data
    prints = {
        "archive": archive_fingerprint(data.archive, data.url, data.sha256),
        "weights": weights_fingerprint(params.model.weights),
        "photos": photos_fingerprint(params.search.images),
    }
    with atomic_path(out_dir, is_dir=True) as tmp:  # all three files, or none
        for name, value in prints.items():
            write_json(tmp / f"{name}.json", value)
    return prints
