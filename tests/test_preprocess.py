"""One preprocessing path: photos from the wild are read as a person sees them, or refused."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

from fashiondvc.errors import FashionError
from fashiondvc.preprocess import decode_rgb, encode_jpeg, load_rgb, model_input, resize


def jpeg_with_exif(entries: list[tuple[int, int, int, bytes]], size=(40, 20)) -> bytes:
    """A JPEG whose APP1 holds a hand-made little-endian EXIF IFD0 of ``entries``.

    Each entry is (tag, type, count, 4-byte value field); types: 2 ASCII, 3 SHORT, 5 RATIONAL.
    """
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")[:4]
    ifd += struct.pack("<I", 0)
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd
    app1 = b"Exif\0\0" + tiff
    plain = io.BytesIO()
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))  # left half blue
    image.save(plain, format="JPEG", quality=95)
    data = plain.getvalue()
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    return data[:2] + segment + data[2:]


ORIENT_6 = (0x0112, 3, 1, struct.pack("<H", 6))  # rotate 90 degrees clockwise to view


def test_exif_orientation_is_applied():
    image = load_rgb(jpeg_with_exif([ORIENT_6]), "rotated.jpg")
    assert image.size == (20, 40)


@pytest.mark.parametrize("bad_entry", [
    (0x0142, 2, 4, b"abc\0"),   # TileWidth (a LONG) holding an ASCII string
    (0x011A, 2, 4, b"72\0\0"),  # XResolution (a RATIONAL) holding a string
])
def test_malformed_exif_is_ignored_and_the_pixels_are_read(bad_entry):
    data = jpeg_with_exif([ORIENT_6, bad_entry])
    with Image.open(io.BytesIO(data)) as raw:  # the library itself fails on this EXIF
        try:
            ImageOps.exif_transpose(raw)
            library_failed = False
        except Exception:  # noqa: BLE001
            library_failed = True
    image = load_rgb(data, "bad-exif.jpg")
    assert image.mode == "RGB" and image.size in ((40, 20), (20, 40))
    assert library_failed or image.size == (20, 40)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 truncated", b"GIF89a" + b"\0" * 20,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
def test_unreadable_bytes_are_one_line_errors_naming_the_file(data):
    with pytest.raises(FashionError, match=r"^photo\.jpg: not a readable image") as error:
        load_rgb(data, "photo.jpg")
    assert "\n" not in str(error.value)


def test_model_input_is_what_the_store_holds_for_copy_zero():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    stored = decode_rgb(encode_jpeg(resize(image, 32)))  # augment writes, featurize reads
    np.testing.assert_array_equal(model_input(image, 32), stored)
    assert not np.array_equal(model_input(image, 32), np.asarray(resize(image, 32)))


def test_normalize_uses_imagenet_statistics_channel_by_channel():
    import torch

    from fashiondvc.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize

    pixel = torch.tensor([[[[255, 0, 128]]]], dtype=torch.uint8)  # NHWC: one RGB pixel
    out = normalize(pixel)
    assert out.shape == (1, 3, 1, 1) and out.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD,
                                                       strict=True)]
    np.testing.assert_allclose(out.flatten().numpy(), expected, rtol=1e-6)


BAD_EXIF = [ORIENT_6, (0x0142, 2, 4, b"abc\0")]


def test_malformed_exif_through_every_entry_point(tmp_path, capsys):
    """ingest (on_corrupt: fail), index, `fashiondvc search` and the web API all read it."""
    from searchkit import make_collection

    from fashiondvc.cli import main
    from fashiondvc.dataset import ingest
    from fashiondvc.index import build_index
    from fashiondvc.sample import make_sample_archive
    from fashiondvc.search import Searcher
    from fashiondvc.web import create_app

    photo = jpeg_with_exif(BAD_EXIF, size=(64, 96))
    folder = make_sample_archive(tmp_path / "sample", n_images=4, folder=True)
    (folder / "images" / "000002.jpg").write_bytes(photo)
    report = ingest(folder, tmp_path / "ingested")  # on_corrupt defaults to fail
    assert report.n_images == 4 and not report.skipped

    collection = make_collection(tmp_path / "c")
    (collection.images / "exif.jpg").write_bytes(photo)
    index, counts = build_index(collection.model, collection.images, tmp_path / "index")
    assert "exif.jpg" in index.paths and counts["skipped"] == 0

    (tmp_path / "query.jpg").write_bytes(photo)
    main(["search", str(tmp_path / "query.jpg"), "--json", "--index", str(tmp_path / "index"),
          "--model", str(collection.model)])
    assert json.loads(capsys.readouterr().out)["results"]

    client = create_app(Searcher.open(tmp_path / "index", collection.model)).test_client()
    answer = client.post("/api/query", data={"photo": (io.BytesIO(photo), "bad-exif.jpg")},
                         content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_data(as_text=True)
