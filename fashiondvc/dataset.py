"""The Clothing Attribute Dataset: attribute names, label sets, archive reading and ingest.

The official archive holds ``images/%06d.jpg`` and one MATLAB file per attribute,
``labels/<attribute>_GT.mat``, each with a variable ``GT`` of shape (1856, 1) whose row i is image
i + 1. Values are 1..K; NaN means the annotators disagreed, so the label is *missing*, not negative.
"""

from __future__ import annotations

import http.client
import io
import os
import posixpath
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from fashiondvc.errors import FashionError
from fashiondvc.io import atomic_path, sha256_file, write_csv, write_json
from fashiondvc.labels import ATTRIBUTES, N_CLASSES
from fashiondvc.preprocess import load_rgb
from fashiondvc.progress import progress

#: Largest archive member read into memory (real images are under 1 MB, labels under 50 kB).
MAX_MEMBER_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- archive access


class ArchiveReader:
    """Read members of the dataset from a zip file or an extracted folder, by relative path.

    Member paths are relative to the dataset root (the folder holding ``labels/`` and
    ``images/``), which may sit one level down, as in the official ``ClothingAttributeDataset/``.
    """

    def __init__(self, source: str | os.PathLike):
        self.source = Path(source)
        self._infos: dict[str, zipfile.ZipInfo] = {}
        if self.source.is_dir():
            self._zip = None
            names = [p.relative_to(self.source).as_posix() for p in self.source.rglob("*")
                     if p.is_file()]
        elif self.source.is_file():
            self._zip = _open_zip(self.source)
            for info in self._zip.infolist():
                name = _member_name(info)
                _check_member_name(self.source, name)
                if not name.endswith("/"):
                    self._infos[name] = info
            names = list(self._infos)
        else:
            raise FashionError(f"data.archive: {self.source} does not exist")
        names = [n for n in names if not _is_metadata(n)]
        if self._zip is not None:
            _check_readable(self.source, [self._infos[n] for n in names])
        self.root = _find_root(self.source, names)
        prefix = f"{self.root}/" if self.root else ""
        self.members = {n[len(prefix):]: n for n in names if n.startswith(prefix)}

    def list(self, folder: str) -> list[str]:
        """Sorted member paths directly inside ``folder`` (e.g. ``"labels"``)."""
        return sorted(m for m in self.members if posixpath.dirname(m) == folder)

    def read(self, member: str) -> bytes:
        """The bytes of one member."""
        name = self.members.get(member)
        if name is None:
            raise FashionError(f"{self.source}: missing member {member}")
        if self._zip is None:
            return (self.source / name).read_bytes()
        info = self._infos[name]
        if info.file_size > MAX_MEMBER_BYTES:
            raise FashionError(f"{self.source}: {name} unpacks to {info.file_size} bytes, more "
                               f"than {MAX_MEMBER_BYTES}")
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError,
                NotImplementedError) as exc:  # RuntimeError: encrypted member
            raise FashionError(f"{self.source}: cannot read {name} ({exc})") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Hosts (ZipInfo.create_system) whose zips may use ``\\`` as the separator: MS-DOS/FAT (0,
#: Windows PowerShell 5's Compress-Archive writes it with backslashes), OS/2 HPFS (6),
#: Windows NTFS (11), VFAT (14). unzip reads ``\\`` as a separator for these, and so do we.
DOS_HOSTS = frozenset({0, 6, 11, 14})
#: Compression methods zipfile reads; names of others zips meet, for the message.
READABLE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                              zipfile.ZIP_LZMA})
METHOD_NAMES = {1: "Shrink", 6: "Implode", 9: "Deflate64 (Windows Explorer's for large files)",
                10: "PKWARE DCL Implode", 18: "IBM TERSE", 19: "IBM LZ77", 20: "Zstandard",
                93: "Zstandard", 95: "xz", 96: "JPEG (WinZip)", 97: "WavPack", 98: "PPMd",
                99: "AES encryption (WinZip)"}


def _open_zip(source: Path) -> zipfile.ZipFile:
    """``source`` as a zip, or `FashionError` saying what it really is."""
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        reason = str(exc)
    with open(source, "rb") as handle:
        head = handle.read(512)
    kinds = {b"\x1f\x8b": "a gzip file (.tar.gz?)", b"BZh": "a bzip2 file (.tar.bz2?)",
             b"\xfd7zXZ\x00": "an xz file (.tar.xz?)", b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive",
             b"Rar!\x1a\x07": "a RAR archive", b"(\xb5/\xfd": "a Zstandard file"}
    kind = next((k for magic, k in kinds.items() if head.startswith(magic)), None)
    if kind is None and len(head) >= 262 and head[257:262] == b"ustar":
        kind = "a tar archive"
    if kind is not None:
        raise FashionError(f"{source}: not a zip archive but {kind}; extract it and set "
                           "data.archive to the extracted folder") from None
    raise FashionError(f"{source}: not a readable zip archive ({reason})") from None


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's path with ``/`` separators, as unzip extracts it."""
    name = info.filename
    if info.create_system in DOS_HOSTS and "\\" in name:
        name = name.replace("\\", "/")
    return name


def _is_metadata(name: str) -> bool:
    """macOS Finder's additions to a zip: ``__MACOSX/`` and AppleDouble ``._*`` files."""
    parts = name.split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def _check_readable(source: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse, before reading anything, an encrypted zip or one compressed with a method that
    zipfile cannot decompress, naming the method."""
    for info in infos:
        if info.flag_bits & 0x1:
            raise FashionError(f"{source}: password-protected (encrypted) zip ({info.filename});"
                               " extract it with its password and set data.archive to the "
                               "extracted folder")
        if info.compress_type not in READABLE_METHODS:
            method = METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise FashionError(f"{source}: {info.filename} is compressed with {method}, which "
                               "Python's zipfile cannot read; extract it with unzip or 7-Zip "
                               "and set data.archive to the extracted folder, or re-zip it "
                               "with the standard Deflate method")


def _check_member_name(archive: Path, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise FashionError(f"{archive}: unsafe member path {name!r} escapes the archive root")


def _find_root(source: Path, names: list[str]) -> str:
    roots = {posixpath.dirname(posixpath.dirname(n)) for n in names
             if posixpath.basename(posixpath.dirname(n)) == "labels" and n.endswith("_GT.mat")}
    for root in sorted(roots, key=len):
        prefix = f"{root}/" if root else ""
        if any(n.startswith(f"{prefix}images/") for n in names):
            return root
    if not roots:
        example = f", e.g. {sorted(names)[0]!r}" if names else ""
        raise FashionError(f"{source}: no labels/<attribute>_GT.mat files found among its "
                           f"{len(names)} files{example}")
    raise FashionError(f"{source}: no images/ folder beside labels/")


# --------------------------------------------------------------------------- labels


def parse_label_file(data: bytes, attribute: str, n_images: int | None = None) -> np.ndarray:
    """Parse one ``<attribute>_GT.mat`` into a float vector with NaN for missing labels.

    Raises
    ------
    FashionError
        If the file is not a MATLAB file, lacks ``GT``, has the wrong length, or holds values
        outside 1..K.
    """
    source = f"labels/{attribute}_GT.mat"
    try:
        content = scipy.io.loadmat(io.BytesIO(data))
    except Exception as exc:  # scipy raises several unrelated types for corrupt files
        raise FashionError(f"{source}: not a readable MATLAB file ({exc})") from None
    if "GT" not in content:
        raise FashionError(f"{source}: no variable 'GT'")
    try:
        values = np.asarray(content["GT"], dtype=np.float64)
    except (TypeError, ValueError):
        raise FashionError(f"{source}: GT is not numeric") from None
    if values.ndim != 2 or 1 not in values.shape:
        raise FashionError(f"{source}: GT has shape {values.shape}, expected (n, 1)")
    values = values.reshape(-1)
    if n_images is not None and len(values) != n_images:
        raise FashionError(f"{source}: GT has {len(values)} rows, expected {n_images}")
    k = N_CLASSES.get(attribute)
    observed = values[~np.isnan(values)]
    if k is not None and observed.size:
        bad = observed[(observed < 1) | (observed > k) | (observed != np.round(observed))]
        if bad.size:
            raise FashionError(f"{source}: value {bad[0]:g} outside 1..{k}")
    return values


def read_labels(reader: ArchiveReader) -> pd.DataFrame:
    """All label files of an archive as one table: ``image_id`` plus one column per attribute.

    Files are keyed by name, never by listing order; columns follow `ATTRIBUTES` order, with any
    unknown attributes after them. All files must have as many rows as most of them do; the
    first file that differs is named.
    """
    files = {posixpath.basename(m)[: -len("_GT.mat")]: m
             for m in reader.list("labels") if m.endswith("_GT.mat")}
    names = [a for a in ATTRIBUTES if a in files] + sorted(set(files) - set(ATTRIBUTES))
    columns = {name: parse_label_file(reader.read(files[name]), name) for name in names}
    lengths = [len(values) for values in columns.values()]
    n_images = max(lengths, key=lengths.count)  # the most common length; ties: the first
    for name, values in columns.items():
        if len(values) != n_images:
            raise FashionError(f"labels/{name}_GT.mat: GT has {len(values)} rows, "
                               f"but the other label files have {n_images}")
    table = pd.DataFrame(columns)
    table.insert(0, "image_id", np.arange(1, len(table) + 1))
    return table


def image_member(image_id: int) -> str:
    """Archive path of image ``image_id`` (1-based)."""
    return f"images/{image_id:06d}.jpg"


# --------------------------------------------------------------------------- download


def download(url: str, dest: str | os.PathLike, sha256: str | None = None,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, atomically, verifying ``sha256`` if given.

    ``file://`` URLs work too. Nothing is left at ``dest`` when the download fails.
    """
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "fashiondvc"})
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, \
                    open(tmp, "wb") as out:
                length = response.headers.get("Content-Length")  # file:// sets it too
                total = int(length) if length and length.isdigit() else None
                with progress(total=total, unit="B", unit_scale=True,
                              desc=f"download {dest.name}") as bar:
                    received = 0
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if total is not None and received < total:
                    raise FashionError(f"data.url: {url} ended after {received} of {total} bytes")
        except urllib.error.HTTPError as exc:
            raise FashionError(f"data.url: {url} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or repr(exc)
            raise FashionError(f"data.url: cannot download {url} ({reason})") from None
        if sha256:
            verify_sha256(tmp, sha256, label=url)
    return dest


def verify_sha256(path: str | os.PathLike, expected: str, label: str | None = None) -> str:
    """Return the file's sha256, raising `FashionError` if it differs from ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise FashionError(
            f"data.sha256: {label or path} has sha256 {actual}, expected {expected.lower()}"
        )
    return actual


# --------------------------------------------------------------------------- ingest


@dataclass
class IngestReport:
    """What ingest read and wrote."""

    n_images: int
    n_attributes: int
    missing: dict[str, int]
    archive_sha256: str
    skipped: list[dict[str, str]] = field(default_factory=list)


def ingest(archive: str | os.PathLike, out_dir: str | os.PathLike, *,
           sha256: str | None = None, on_corrupt: str = "fail") -> IngestReport:
    """Validate an archive and write ``labels.csv``, ``images/`` and ``manifest.json``.

    Parameters
    ----------
    archive : path
        The official zip or its extracted folder.
    out_dir : path
        Output folder, replaced atomically.
    sha256 : str, optional
        Expected sha256 of a zip archive.
    on_corrupt : {"fail", "skip"}
        What to do with an unreadable or missing image: stop, or drop it and list it in
        ``skipped.csv``.
    """
    if on_corrupt not in ("fail", "skip"):
        raise FashionError(f"data.on_corrupt: must be 'fail' or 'skip', got {on_corrupt!r}")
    archive = Path(archive)
    if sha256 and archive.is_dir():
        raise FashionError(f"data.sha256: is set, but data.archive {archive} is a folder "
                           "(only a zip file can be pinned; set data.sha256: null)")
    if sha256 and archive.is_file():
        digest = verify_sha256(archive, sha256)
    else:
        digest = sha256_file(archive) if archive.is_file() else "folder"
    with ArchiveReader(archive) as reader, atomic_path(out_dir, is_dir=True) as tmp:
        table = read_labels(reader)
        images_dir = tmp / "images"
        images_dir.mkdir()
        kept, skipped = [], []
        for image_id in progress(table["image_id"], desc="ingest", unit="img"):
            member = image_member(int(image_id))
            try:
                data = reader.read(member)
                load_rgb(data, member)
            except FashionError as exc:
                # skipped.csv is an output: its reasons must not depend on where the archive is
                reason = str(exc).removeprefix(f"{reader.source}: ")
                if on_corrupt == "fail":
                    raise FashionError(f"{reader.source}: {reason} "
                                       "(set data.on_corrupt: skip to drop it)") from None
                skipped.append({"image_id": str(image_id), "reason": reason})
                continue
            (images_dir / posixpath.basename(member)).write_bytes(data)
            kept.append(image_id)
        table = table[table["image_id"].isin(kept)].reset_index(drop=True)
        if table.empty:
            raise FashionError(f"{archive}: no readable images")
        write_csv(tmp / "labels.csv", table)
        if on_corrupt == "skip":  # written even when empty, so the report is always there
            write_csv(tmp / "skipped.csv", pd.DataFrame(skipped, columns=["image_id", "reason"]))
        attributes = [c for c in table.columns if c != "image_id"]
        report = IngestReport(
            n_images=len(table), n_attributes=len(attributes),
            missing={a: int(table[a].isna().sum()) for a in attributes},
            archive_sha256=digest, skipped=skipped,
        )
        write_json(tmp / "manifest.json", {
            "n_images": report.n_images, "n_attributes": report.n_attributes,
            "n_skipped": len(skipped), "archive_sha256": digest, "missing": report.missing,
        })
    return report


def read_ingested(folder: str | os.PathLike) -> pd.DataFrame:
    """The labels table ingest wrote."""
    path = Path(folder) / "labels.csv"
    if not path.exists():
        raise FashionError(f"{path} does not exist: run the ingest stage first")
    return pd.read_csv(path)
