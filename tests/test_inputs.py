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
