"""Colour-managed test photos: minimal ICC v2 matrix/TRC profiles and pixels encoded in them,
computed here with the published formulas (not with the library under test)."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

D65 = (0.3127, 0.3290)
D50_XYZ = (0.9642, 1.0, 0.8249)
#: (white x, y, red x, y, green x, y, blue x, y), as a PNG cHRM chunk orders them.
SRGB = (*D65, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)
ADOBE_RGB = (*D65, 0.64, 0.33, 0.21, 0.71, 0.15, 0.06)  # Adobe RGB (1998), 4.2
DISPLAY_P3 = (*D65, 0.680, 0.320, 0.265, 0.690, 0.150, 0.060)
ADOBE_GAMMA = 563 / 256  # 2.19921875, as Adobe's profile stores it (u8Fixed8)


def rgb_to_xyz(chromaticity) -> np.ndarray:
    """Linear RGB -> XYZ (white Y = 1) from white and primaries xy."""
    wx, wy, *rest = chromaticity
    xy = np.array(rest, dtype=float).reshape(3, 2)
    m = np.stack([xy[:, 0] / xy[:, 1], np.ones(3), (1 - xy[:, 0] - xy[:, 1]) / xy[:, 1]])
    white = np.array([wx / wy, 1, (1 - wx - wy) / wy])
    return m * np.linalg.solve(m, white)


def bradford(src_white, dst_white) -> np.ndarray:
    cone = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])
    gain = (cone @ np.asarray(dst_white)) / (cone @ np.asarray(src_white))
    return np.linalg.solve(cone, np.diag(gain) @ cone)


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _curve_tag(trc) -> bytes:
    """``trc``: a gamma (float) or "srgb" (a 1024-entry table of the sRGB curve)."""
    if trc == "srgb":
        table = np.round(srgb_decode(np.linspace(0, 1, 1024)) * 65535).astype(">u2")
        return b"curv\0\0\0\0" + struct.pack(">I", 1024) + table.tobytes()
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(trc * 256)) + b"\0\0"


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">IIHB", 0, 0, 0, 0) + b"\0" * 67)


def _profile(device_class: bytes, colour_space: bytes, connection_space: bytes,
             tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 profile's bytes: the 128-byte header (D50 illuminant), the tag table, the
    tags, each padded to 4 bytes (ICC.1:2001-04, section 6)."""
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000)
              + device_class + colour_space + connection_space + b"\0" * 12 + b"acsp"
              + b"\0" * 28 + b"".join(_s15(v) for v in D50_XYZ) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def icc_profile(chromaticity=ADOBE_RGB, trc=ADOBE_GAMMA, *, gray: bool = False,
                description: str = "test profile") -> bytes:
    """A minimal ICC v2 display profile: header, desc, wtpt, and rXYZ/gXYZ/bXYZ with
    rTRC/gTRC/bTRC (colorants Bradford-adapted to D50, ICC.1:2001-04 annex), or a grey
    profile's kTRC with ``gray``."""
    tags = [(b"desc", _desc_tag(description)), (b"wtpt", _xyz_tag(D50_XYZ))]
    if gray:
        tags.append((b"kTRC", _curve_tag(trc)))
    else:
        m = rgb_to_xyz(chromaticity)
        d50 = bradford(m @ np.ones(3), np.array(D50_XYZ)) @ m
        tags += [(b"rXYZ", _xyz_tag(d50[:, 0])), (b"gXYZ", _xyz_tag(d50[:, 1])),
                 (b"bXYZ", _xyz_tag(d50[:, 2]))]
        curve = _curve_tag(trc)
        tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    return _profile(b"mntr", b"GRAY" if gray else b"RGB ", b"XYZ ", tags)


def encode_in(pixels: np.ndarray, chromaticity=ADOBE_RGB, trc=ADOBE_GAMMA) -> np.ndarray:
    """sRGB uint8 (H, W, 3) pixels -> the same colours in another RGB space (same D65 white),
    uint8."""
    linear = srgb_decode(pixels / 255)
    matrix = np.linalg.solve(rgb_to_xyz(chromaticity), rgb_to_xyz(SRGB))
    target = np.clip(linear @ matrix.T, 0, 1)
    encoded = srgb_encode(target) if trc == "srgb" else target ** (1 / trc)
    return np.round(encoded * 255).astype(np.uint8)


def garment(size=(48, 64), seed: int = 0) -> np.ndarray:
    """An sRGB 'photo': blocks of saturated and muted colours (a red garment, a green stripe,
    skin, background), uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    h, w = size
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:] = (235, 232, 225)
    pixels[h // 6: 5 * h // 6, w // 4: 3 * w // 4] = (190, 30, 40)
    pixels[h // 2 - 3: h // 2 + 3, w // 4: 3 * w // 4] = (39, 159, 60)
    pixels[: h // 6, w // 3: 2 * w // 3] = (224, 172, 140)
    noise = rng.integers(-12, 13, pixels.shape)
    return np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, fmt: str = "PNG", icc: bytes | None = None, **options) -> bytes:
    """``pixels`` (uint8 HxWxC) saved as ``fmt`` with ``icc`` embedded."""
    buffer = io.BytesIO()
    if icc is not None:
        options["icc_profile"] = icc
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def cmyk_profile() -> bytes:
    """A minimal ICC v2 CMYK output profile: one A2B0 lut16 (2-point grid per ink) to Lab,
    white paper (L* 100) without ink, L* 0 under full black, cyan/magenta/yellow inks shifting
    a* and b*. Enough for littleCMS to convert CMYK -> sRGB."""
    clut = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lightness = 100 * (1 - k) * (1 - 0.2 * (c + m + y))
                    a = (1 - k) * (60 * m - 40 * c)
                    b = (1 - k) * (70 * y - 50 * c - 30 * m)
                    clut += [round(lightness / 100 * 0xFF00), round((a + 128) * 256),
                             round((b + 128) * 256)]
    lut = (b"mft2\0\0\0\0" + bytes([4, 3, 2, 0]) + b"".join(_s15(v) for v in np.eye(3).ravel())
           + struct.pack(">HH", 2, 2) + struct.pack(">8H", *([0, 65535] * 4))
           + struct.pack(f">{len(clut)}H", *clut) + struct.pack(">6H", *([0, 65535] * 3)))
    tags = [(b"desc", _desc_tag("test CMYK")), (b"wtpt", _xyz_tag(D50_XYZ)), (b"A2B0", lut)]
    return _profile(b"prtr", b"CMYK", b"Lab ", tags)
