"""Label parsing, NaN masking, label sets and ingest on the generated archive."""

import io

import numpy as np
import pandas as pd
import pytest
import scipy.io

from fashiondvc.dataset import ArchiveReader, ingest, parse_label_file, read_labels
from fashiondvc.errors import FashionError
from fashiondvc.labels import (
    ATTRIBUTES,
    BINARY_ATTRIBUTES,
    COLOURS,
    LABEL_SETS,
    binary_targets,
    resolve_label_set,
)
from fashiondvc.sample import make_sample_archive


def mat_bytes(values) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"GT": np.asarray(values, dtype=float).reshape(-1, 1)})
    return buffer.getvalue()


def test_parse_label_file_keeps_nan_as_missing():
    values = parse_label_file(mat_bytes([1, 2, np.nan, 2]), "red")
    assert np.isnan(values[2])
    assert values[[0, 1, 3]].tolist() == [1, 2, 2]


def test_parse_label_file_checks_range_per_attribute():
    assert parse_label_file(mat_bytes([1, 7, 3]), "category").tolist() == [1, 7, 3]
    with pytest.raises(FashionError, match="labels/red_GT.mat: value 3 outside 1..2"):
        parse_label_file(mat_bytes([1, 3]), "red")


def test_read_labels_keys_files_by_name_not_listing_order(sample_zip):
    with ArchiveReader(sample_zip) as reader:
        table = read_labels(reader)
        raw = scipy.io.loadmat(io.BytesIO(reader.read("labels/blue_GT.mat")))["GT"].ravel()
    assert list(table.columns) == ["image_id", *ATTRIBUTES]
    assert table["image_id"].tolist() == list(range(1, 25))
    np.testing.assert_array_equal(table["blue"].to_numpy(), raw)


def test_binary_targets_mask_missing_labels():
    table = pd.DataFrame({"red": [1.0, 2.0, np.nan], "blue": [2.0, np.nan, 1.0]})
    targets, mask = binary_targets(table, ["red", "blue"])
    assert targets.tolist() == [[0, 1], [1, 0], [0, 0]]
    assert mask.tolist() == [[True, True], [True, False], [False, True]]


def test_label_sets():
    assert resolve_label_set("colors11") == list(COLOURS)
    assert len(resolve_label_set("attrs20")) == 20
    assert not {"gender", "skin_exposure", "placket"} & set(LABEL_SETS["attrs20"])
    assert resolve_label_set("binary23") == list(BINARY_ATTRIBUTES)
    assert resolve_label_set(["red", "necktie"]) == ["red", "necktie"]
    assert resolve_label_set("red") == ["red"]


@pytest.mark.parametrize("labels, message", [
    ([], "empty"), (["violet"], "unknown label 'violet'"), ("category", "multi-class"),
    (["red", "red"], "duplicate"),
])
def test_label_set_errors(labels, message):
    with pytest.raises(FashionError, match=message):
        resolve_label_set(labels)


@pytest.mark.parametrize("as_folder", [False, True])
def test_ingest_zip_or_folder(tmp_path, as_folder):
    source = make_sample_archive(tmp_path / "archive", n_images=10, seed=3, folder=as_folder)
    report = ingest(source, tmp_path / "out")
    labels = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert report.n_images == 10 and report.n_attributes == 26
    assert len(labels) == 10
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        f"{i:06d}.jpg" for i in range(1, 11)]
    assert report.missing["red"] == int(labels["red"].isna().sum())


# ---------------------------------------------------------------- archives as tools make them

def _sample_members(tmp_path) -> dict[str, bytes]:
    root = make_sample_archive(tmp_path / "sample", n_images=4, seed=5, folder=True)
    return {p.relative_to(root.parent).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _zip(path, members: dict[str, bytes], *, dos: bool = False, dirs: bool = False,
         method: int = 0, zip64: bool = False, cp437: bool = False):
    import zipfile

    class Cp437Info(zipfile.ZipInfo):  # the name in cp437 without the UTF-8 flag (old tools)
        def _encodeFilenameFlags(self):
            return self.filename.encode("cp437"), self.flag_bits

    with zipfile.ZipFile(path, "w") as archive:
        if dirs:
            for folder in sorted({n.rsplit("/", 1)[0] + "/" for n in members}):
                info = zipfile.ZipInfo(folder.replace("/", "\\") if dos else folder)
                info.create_system = 0 if dos else 3
                archive.writestr(info, b"")
        for name, data in members.items():
            info = (Cp437Info if cp437 else zipfile.ZipInfo)(
                name.replace("/", "\\") if dos else name)
            info.create_system = 0 if dos else 3  # 0: MS-DOS, as PowerShell 5 writes
            info.compress_type = method
            with archive.open(info, "w", force_zip64=zip64) as handle:
                handle.write(data)
    return path


def _patch_headers(path, field: str, value: int) -> None:
    """Set the general purpose ``flags`` or compression ``method`` of every member, in its
    local and central headers (zipfile writes neither encryption nor Deflate64)."""
    offsets = {"flags": (6, 8), "method": (8, 10)}[field]
    data = bytearray(path.read_bytes())
    for signature, offset in zip((b"PK\x03\x04", b"PK\x01\x02"), offsets, strict=True):
        start = data.find(signature)
        while start != -1:
            old = int.from_bytes(data[start + offset:start + offset + 2], "little")
            new = old | value if field == "flags" else value
            data[start + offset:start + offset + 2] = new.to_bytes(2, "little")
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


def _same_as_reference(tmp_path, source) -> None:
    members = _sample_members(tmp_path / "ref")
    reference = _zip(tmp_path / "reference.zip", members)
    ingest(reference, tmp_path / "expected")
    report = ingest(source, tmp_path / "got")
    assert report.n_images == 4
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "got" / "labels.csv"),
                                  pd.read_csv(tmp_path / "expected" / "labels.csv"))
    for i in range(1, 5):
        name = f"images/{i:06d}.jpg"
        assert (tmp_path / "got" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()


@pytest.mark.parametrize("kind", ["powershell", "powershell_with_dirs", "dirs", "extra_folder",
                                  "no_folder", "macosx", "cp437_name", "utf8_name", "zip64",
                                  "deflate", "bzip2", "lzma"])
def test_archives_as_standard_tools_write_them_are_read(tmp_path, kind):
    """What unzip extracts, ingest reads: PowerShell 5's Compress-Archive (backslashes, host
    MS-DOS: it was "no labels/<attribute>_GT.mat files found"), directory entries, any number
    of folders above the dataset, Finder's __MACOSX/ and ._* files, cp437 or UTF-8 names,
    zip64, and the compression methods zipfile reads."""
    import zipfile

    members = _sample_members(tmp_path)
    options = {}
    if kind == "powershell":
        options = {"dos": True, "method": zipfile.ZIP_DEFLATED}
    elif kind == "powershell_with_dirs":
        options = {"dos": True, "dirs": True}
    elif kind == "dirs":
        options = {"dirs": True}
    elif kind == "extra_folder":
        members = {f"Downloads/data/{n}": d for n, d in members.items()}
    elif kind == "no_folder":
        members = {n.split("/", 1)[1]: d for n, d in members.items()}
    elif kind == "macosx":
        extra = {}
        for name in members:
            folder, base = name.rsplit("/", 1)
            extra[f"__MACOSX/{folder}/._{base}"] = b"\0\x05\x16\x07AppleDouble junk"
            extra[f"{folder}/._{base}"] = b"\0\x05\x16\x07AppleDouble junk"
        members = {**members, **extra, "ClothingAttributeDataset/.DS_Store": b"\0\0\0\1Bud1"}
    elif kind in ("cp437_name", "utf8_name"):
        members = {f"Données/{n}": d for n, d in members.items()}
        options = {"cp437": kind == "cp437_name"}
    elif kind == "zip64":
        options = {"zip64": True}
    else:
        options = {"method": {"deflate": zipfile.ZIP_DEFLATED, "bzip2": zipfile.ZIP_BZIP2,
                              "lzma": zipfile.ZIP_LZMA}[kind]}
    _same_as_reference(tmp_path, _zip(tmp_path / "archive.zip", members, **options))


def test_a_zip_with_an_unreadable_method_or_a_password_is_refused_with_the_reason(tmp_path):
    members = _sample_members(tmp_path)
    deflate64 = _zip(tmp_path / "big.zip", members)
    _patch_headers(deflate64, "method", 9)
    with pytest.raises(FashionError, match=r"big\.zip: .* compressed with Deflate64"):
        ingest(deflate64, tmp_path / "out")
    locked = _zip(tmp_path / "locked.zip", members)
    _patch_headers(locked, "flags", 0x1)
    with pytest.raises(FashionError, match=r"locked\.zip: password-protected"):
        ingest(locked, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_a_tar_named_zip_is_refused_as_what_it_is(tmp_path, mode):
    import tarfile

    root = make_sample_archive(tmp_path / "sample", n_images=4, folder=True)
    fake = tmp_path / "ClothingAttributeDataset.zip"
    with tarfile.open(fake, mode) as archive:
        archive.add(root, arcname=root.name)
    kind = "a tar archive" if mode == "w" else r"a gzip file \(\.tar\.gz\?\)"
    with pytest.raises(FashionError, match=f"not a zip archive but {kind}; extract it"):
        ingest(fake, tmp_path / "out")
