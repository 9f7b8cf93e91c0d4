"""Content fingerprints of the inputs from outside the repository."""

from __future__ import annotations

import os

from fashiondvc.inputs import fingerprint_folder


def test_a_file_name_that_is_not_utf8_is_fingerprinted_by_its_bytes(tmp_path):
    # old archives and Windows copies make Latin-1 names: b"robe caf\xe9.jpg"
    folder = tmp_path / "photos"
    folder.mkdir()
    latin1 = os.fsdecode(b"robe caf\xe9.jpg")  # a surrogate-escaped str on Linux
    (folder / latin1).write_bytes(b"jpeg bytes")
    first = fingerprint_folder(folder, (".jpg",))
    assert first["files"] == 1
    os.rename(folder / latin1, folder / "robe café.jpg")  # same bytes, the UTF-8 name
    second = fingerprint_folder(folder, (".jpg",))
    assert second["files"] == 1 and second["sha256"] != first["sha256"]


def test_the_photo_fingerprint_counts_what_the_index_reads(tmp_path):
    """One list of photo names (.jfif, upper case...) and one link rule for index and
    fingerprint: a photo behind a linked folder or a linked file changes the fingerprint."""
    from fashiondvc.index import collection_files
    from fashiondvc.inputs import photos_fingerprint

    folder, outside = tmp_path / "photos", tmp_path / "outside"
    folder.mkdir()
    (outside / "sub").mkdir(parents=True)
    for name in ("a.jfif", "b.JPG", "c.pjp", "d.webp", "notes.txt"):
        (folder / name).write_bytes(name.encode())
    (outside / "sub" / "e.jpg").write_bytes(b"e")
    (outside / "f.jpg").write_bytes(b"f")
    (folder / "linked").symlink_to(outside / "sub", target_is_directory=True)
    (folder / "f.jpg").symlink_to(outside / "f.jpg")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    first = photos_fingerprint(str(folder))
    files, _ = collection_files(folder)
    assert first["files"] == len(files) == 6
    (outside / "sub" / "e.jpg").write_bytes(b"changed")
    assert photos_fingerprint(str(folder))["sha256"] != first["sha256"]
