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


# --------------------------------------------------------------------------- colour management

def _png_with_chunks(pixels: np.ndarray, chunks: list[tuple[bytes, bytes]]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for name, data in chunks:
        info.add(name, data)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _float_decode(stored: np.ndarray, chromaticity, trc) -> np.ndarray:
    """The exact sRGB pixels of ``stored`` (encoded in ``chromaticity`` with ``trc``)."""
    from colourkit import SRGB, rgb_to_xyz, srgb_decode, srgb_encode

    linear = srgb_decode(stored / 255) if trc == "srgb" else (stored / 255) ** trc
    matrix = np.linalg.solve(rgb_to_xyz(SRGB), rgb_to_xyz(chromaticity))
    return np.round(srgb_encode(np.clip(linear @ matrix.T, 0, 1)) * 255).astype(int)


SPACES = {"adobe_rgb": ("ADOBE_RGB", "ADOBE_GAMMA"), "display_p3": ("DISPLAY_P3", "srgb")}


def _space(name):
    import colourkit

    chromaticity, trc = SPACES[name]
    return getattr(colourkit, chromaticity), getattr(colourkit, trc, trc)


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("fmt,options", [("PNG", {}), ("WEBP", {"lossless": True}),
                                         ("TIFF", {})])
def test_an_embedded_rgb_profile_converts_to_srgb(space, fmt, options):
    """A photo re-encoded in Adobe RGB (1998) or Display P3 with the profile embedded reads as
    the sRGB original (the 8-bit re-encoding itself costs up to 4 levels; littleCMS is within
    1 of the exact conversion), where the stored pixels are tens of levels off."""
    from colourkit import encode_in, encoded, garment, icc_profile

    chromaticity, trc = _space(space)
    original = garment().astype(int)
    stored = encode_in(garment(), chromaticity, trc)
    assert np.abs(stored.astype(int) - original).max() > 40  # unconverted, the test fails
    image = load_rgb(encoded(stored, fmt, icc_profile(chromaticity, trc), **options), "p.png")
    assert image.mode == "RGB"
    out = np.asarray(image).astype(int)
    assert np.abs(out - _float_decode(stored, chromaticity, trc)).max() <= 2
    assert np.abs(out - original).max() <= 4


def test_a_jpeg_with_an_adobe_rgb_profile_reads_as_its_srgb_twin():
    """JPEG (lossy) in Adobe RGB vs the same photo saved as an sRGB JPEG: on average within a
    level, where the unconverted pixels are 4+ levels off on average (the red block 20+)."""
    from colourkit import encode_in, encoded, garment, icc_profile

    options = {"quality": 100, "subsampling": 0}
    srgb = np.asarray(load_rgb(encoded(garment(), "JPEG", **options), "s.jpg")).astype(int)
    adobe_bytes = encoded(encode_in(garment()), "JPEG", icc_profile(), **options)
    adobe = np.asarray(load_rgb(adobe_bytes, "a.jpg")).astype(int)
    with Image.open(io.BytesIO(adobe_bytes)) as raw:
        unconverted = np.asarray(raw.convert("RGB")).astype(int)
    assert np.abs(unconverted - srgb).mean() > 4
    assert np.abs(adobe - srgb).mean() < 1.0


def test_alpha_keeps_through_the_profile_and_lands_on_white():
    from colourkit import encode_in, encoded, garment, icc_profile

    original = garment().astype(int)
    alpha = np.full(original.shape[:2] + (1,), 255, dtype=np.uint8)
    alpha[:8] = 0  # top rows fully transparent
    rgba = np.concatenate([encode_in(garment()), alpha], axis=2)
    out = np.asarray(load_rgb(encoded(rgba, "PNG", icc_profile()), "cut-out.png")).astype(int)
    assert (out[:8] == 255).all()
    assert np.abs(out[8:] - original[8:]).max() <= 4


def test_a_grey_profile_converts_grey_pixels_including_16_bit():
    """A linear-light grey profile (gamma 1.0): stored level v shows as sRGB's encoding of v."""
    from colourkit import encoded, icc_profile, srgb_encode

    levels = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    expected = np.round(srgb_encode(levels / 255) * 255).astype(int)
    linear_grey = icc_profile(trc=1.0, gray=True)
    out = np.asarray(load_rgb(encoded(levels, "PNG", linear_grey), "grey.png")).astype(int)
    assert np.abs(out - expected[..., None]).max() <= 2
    assert np.abs(levels.astype(int) - expected).max() > 50  # unconverted, the test fails

    sixteen = levels.astype(np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(sixteen).save(buffer, format="PNG", icc_profile=linear_grey)
    with Image.open(io.BytesIO(buffer.getvalue())) as check:
        assert check.mode.startswith("I") and "icc_profile" in check.info
    out16 = np.asarray(load_rgb(buffer.getvalue(), "grey16.png")).astype(int)
    assert np.abs(out16 - expected[..., None]).max() <= 2


def test_a_palette_png_with_iccp_converts_its_colours():
    from colourkit import encode_in, icc_profile

    original = np.zeros((8, 8, 3), dtype=np.uint8)
    original[:, :4] = (190, 30, 40)
    original[:, 4:] = (39, 159, 60)
    palette = Image.fromarray(encode_in(original)).quantize(colors=2)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", icc_profile=icc_profile())
    out = np.asarray(load_rgb(buffer.getvalue(), "palette.png")).astype(int)
    assert np.abs(out - original.astype(int)).max() <= 4


@pytest.mark.parametrize("icc", [b"not a profile", b"\0" * 200, None])
def test_a_broken_or_mismatched_profile_is_ignored(icc):
    """Unparsable bytes, a zeroed header, a grey profile on RGB pixels: pixels as stored."""
    from colourkit import encoded, garment, icc_profile

    icc = icc_profile(gray=True, trc=1.0) if icc is None else icc
    for fmt in ("PNG", "JPEG"):
        data = encoded(garment(), fmt, icc)
        with Image.open(io.BytesIO(data)) as raw:
            assert raw.info.get("icc_profile") == icc
            stored = np.asarray(raw.convert("RGB"))
        np.testing.assert_array_equal(np.asarray(load_rgb(data, f"x.{fmt}")), stored)


def test_png_srgb_chunk_wins_over_gama():
    """PNG 3rd ed. 11.3.2: with an sRGB chunk, gAMA and cHRM are ignored (pixels are sRGB)."""
    from colourkit import garment

    data = _png_with_chunks(garment(), [(b"sRGB", b"\0"), (b"gAMA", struct.pack(">I", 100000))])
    np.testing.assert_array_equal(np.asarray(load_rgb(data, "s.png")), garment())


@pytest.mark.parametrize("space", ["gamma_only", "adobe_chrm"])
def test_png_gama_and_chrm_without_iccp_convert_like_a_browser(space):
    from colourkit import ADOBE_RGB, SRGB, encode_in, garment

    original = garment().astype(int)
    if space == "gamma_only":  # an old Mac PNG: gamma 1.8, sRGB primaries assumed
        chromaticity, gamma, chunks = SRGB, 1.8, []
    else:
        chromaticity, gamma = ADOBE_RGB, 2.2
        chunks = [(b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in ADOBE_RGB)))]
    stored = encode_in(garment(), chromaticity, gamma)
    chunks.append((b"gAMA", struct.pack(">I", round(100000 / gamma))))
    out = np.asarray(load_rgb(_png_with_chunks(stored, chunks), "g.png")).astype(int)
    assert np.abs(stored.astype(int) - original).max() > 15  # unconverted, the test fails
    assert np.abs(out - _float_decode(stored, chromaticity, gamma)).max() <= 2


def test_gama_of_one_over_2_2_is_read_as_srgb():
    """What most PNG writers put for sRGB (libpng reads it so): pixels unchanged."""
    from colourkit import garment

    data = _png_with_chunks(garment(), [(b"gAMA", struct.pack(">I", 45455))])
    np.testing.assert_array_equal(np.asarray(load_rgb(data, "g.png")), garment())


def test_exif_colorspace_alone_changes_nothing():
    """EXIF ColorSpace (0xA001) 'uncalibrated' without a profile: browsers ignore it, so do we."""
    from colourkit import garment

    exif = Image.Exif()
    exif[0xA001] = 0xFFFF
    buffer = io.BytesIO()
    Image.fromarray(garment()).save(buffer, format="PNG", exif=exif.tobytes())
    np.testing.assert_array_equal(np.asarray(load_rgb(buffer.getvalue(), "e.png")), garment())


# --------------------------------------------------------------------------- transparency

def _transparent(kind: str) -> bytes:
    """A 2x1 image: pixel 0 fully transparent (stored black), pixel 1 opaque (10, 20, 30)
    (grey 20 for the greyscale kinds), saved as ``kind`` says."""
    buffer = io.BytesIO()
    if kind in ("RGBA-png", "RGBA-webp", "RGBA-tiff", "RGBA-gif"):
        image = Image.fromarray(np.array([[[0, 0, 0, 0], [10, 20, 30, 255]]], dtype=np.uint8))
        fmt = kind.split("-")[1].upper()
        image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    elif kind == "LA":
        Image.fromarray(np.array([[[0, 0], [20, 255]]], dtype=np.uint8)).save(buffer, "PNG")
    elif kind in ("P-trns", "P-gif"):
        image = Image.new("P", (2, 1), 0)
        image.putpalette([0, 0, 0, 10, 20, 30])
        image.putpixel((1, 0), 1)
        image.save(buffer, "PNG" if kind == "P-trns" else "GIF", transparency=0)
    elif kind == "RGB-trns":
        Image.fromarray(np.array([[[0, 0, 0], [10, 20, 30]]], dtype=np.uint8)).save(
            buffer, "PNG", transparency=(0, 0, 0))
    elif kind == "L-trns":
        Image.fromarray(np.array([[0, 20]], dtype=np.uint8)).save(buffer, "PNG", transparency=0)
    elif kind == "I16-trns":
        Image.fromarray(np.array([[0, 20 * 257]], dtype=np.uint16)).save(
            buffer, "PNG", transparency=0)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["RGBA-png", "RGBA-webp", "RGBA-tiff", "RGBA-gif", "LA",
                                  "P-trns", "P-gif", "RGB-trns", "L-trns", "I16-trns"])
def test_transparency_of_every_kind_lands_on_white(kind):
    out = np.asarray(load_rgb(_transparent(kind), f"cut-out.{kind}"))
    assert out[0, 0].tolist() == [255, 255, 255]
    grey = kind in ("LA", "L-trns", "I16-trns")
    assert out[0, 1].tolist() == ([20, 20, 20] if grey else [10, 20, 30])


def test_half_transparent_pixels_blend_with_white():
    rgba = np.array([[[0, 0, 0, 128], [200, 0, 0, 64]]], dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG")
    rgba = rgba.astype(float)
    out = np.asarray(load_rgb(buffer.getvalue(), "half.png")).astype(int)
    expected = np.round(rgba[0, :, :3] * rgba[0, :, 3:] / 255 + 255 * (1 - rgba[0, :, 3:] / 255))
    assert np.abs(out[0] - expected).max() <= 1


def test_an_adobe_rgb_photo_reads_as_its_srgb_twin_at_every_entry_point(tmp_path, capsys):
    """augment (ingest -> augment), index, `fashiondvc search`, the web upload and the pyfunc
    model give the Adobe RGB photo what they give its sRGB twin, and not what its unconverted
    pixels would get."""
    from colourkit import encode_in, encoded, garment, icc_profile
    from searchkit import make_collection

    from fashiondvc.augment import variants
    from fashiondvc.cli import main
    from fashiondvc.index import build_index
    from fashiondvc.mlmodel import _python_model
    from fashiondvc.predictor import Predictor
    from fashiondvc.search import Searcher
    from fashiondvc.web import create_app

    pixels = garment((96, 64))
    srgb, adobe = encoded(pixels, "PNG"), encoded(encode_in(pixels), "PNG", icc_profile())
    with Image.open(io.BytesIO(adobe)) as raw:
        unconverted = raw.convert("RGB")

    # augment: copy 0 of each, as the store holds it
    jpeg = {"quality": 100, "subsampling": 0}
    stored = [decode_rgb(variants(data, "p.jpg", 1, 0, 32, 0)[0]).astype(int) for data in (
        encoded(pixels, "JPEG", **jpeg), encoded(encode_in(pixels), "JPEG", icc_profile(), **jpeg),
        encoded(encode_in(pixels), "JPEG", **jpeg))]  # the last: the profile dropped
    assert np.abs(stored[0] - stored[1]).mean() < np.abs(stored[0] - stored[2]).mean() / 3

    collection = make_collection(tmp_path / "c")
    predictor = Predictor.from_file(collection.model)
    ref_probs, reference = (a[0] for a in predictor.images([load_rgb(srgb, "s.png")]))
    wrong_probs, wrong = (a[0] for a in predictor.images([unconverted]))
    gap, gap_probs = np.abs(wrong - reference).max(), np.abs(wrong_probs - ref_probs).max()
    assert gap > 1e-3 and gap_probs > 1e-4

    def close(embedding) -> bool:
        return np.abs(np.asarray(embedding) - reference).max() < gap / 5

    def close_probs(probs) -> bool:
        return np.abs(np.asarray(probs) - ref_probs).max() < gap_probs / 5

    (collection.images / "srgb.png").write_bytes(srgb)
    (collection.images / "adobe.png").write_bytes(adobe)
    index, _ = build_index(collection.model, collection.images, tmp_path / "index")
    assert close(index.embeddings[index.paths.index("adobe.png")])
    assert close(index.embeddings[index.paths.index("srgb.png")])

    (tmp_path / "query.png").write_bytes(adobe)
    main(["search", str(tmp_path / "query.png"), "--json", "--index", str(tmp_path / "index"),
          "--model", str(collection.model)])
    attributes = json.loads(capsys.readouterr().out)["attributes"]
    by_name = {a["name"]: a["probability"] for a in attributes}
    assert close_probs([by_name[name] for name in predictor.labels])

    client = create_app(Searcher.open(tmp_path / "index", collection.model)).test_client()
    answer = client.post("/api/query", data={"photo": (io.BytesIO(adobe), "adobe.png")},
                         content_type="multipart/form-data")
    assert answer.status_code == 200 and close(answer.get_json()["embedding"])

    model = _python_model()
    model.predictor = predictor
    table = model.predict(None, [adobe, srgb])
    assert table["error"].isna().all()
    probs = table[predictor.labels].to_numpy()
    assert close_probs(probs[0]) and close_probs(probs[1])


def test_a_cmyk_jpeg_converts_through_its_cmyk_profile():
    """A CMYK JPEG (Adobe's inverted CMYK, as Pillow writes it) with a CMYK profile: paper white
    and full black come out white and black, and every pixel is littleCMS's conversion, not
    Pillow's naive 255 - C - K."""
    from colourkit import cmyk_profile
    from PIL import ImageCms

    inks = np.zeros((8, 8, 4), dtype=np.uint8)
    inks[:, 2:4, 0] = 255          # cyan
    inks[:, 4:6, 1] = 160          # magenta
    inks[:, 6:, 3] = 255           # black
    buffer = io.BytesIO()
    Image.fromarray(inks, "CMYK").save(buffer, format="JPEG", quality=100,
                                       icc_profile=cmyk_profile())
    data = buffer.getvalue()
    out = np.asarray(load_rgb(data, "press.jpg")).astype(int)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode == "CMYK"
        naive = np.asarray(raw.convert("RGB")).astype(int)
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        managed = ImageCms.profileToProfile(
            raw, ImageCms.ImageCmsProfile(io.BytesIO(cmyk_profile())), srgb,
            renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
    np.testing.assert_array_equal(out, np.asarray(managed))
    assert np.abs(out[:, :2] - 255).max() <= 3 and np.abs(out[:, 6:]).max() <= 3
    assert np.abs(out - naive).max() > 20
