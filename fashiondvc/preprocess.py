"""Image preprocessing, one definition for training inputs, the search index and queries.

Every image the network sees goes the same way: decode upright to 8-bit RGB (`load_rgb`),
squash to ``size`` x ``size`` (`resize`, as the paper "resized"), store as JPEG (`encode_jpeg`,
quality `JPEG_QUALITY`), decode (`decode_rgb`), normalise with ImageNet's mean and std
(`normalize`). `model_input` does the middle three for a photo that skips the augmented store
(index and query), so its pixels are those a training image of the same photo would have.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from fashiondvc.errors import FashionError

#: Photo file names the product reads, lower case (a name's suffix is compared lower-cased):
#: one list for the index, the ``inputs`` fingerprint, the web page's file picker and the docs.
#: The JPEG family as browsers and operating systems name it (.jpe, .jfif, .pjpeg, .pjp), PNG,
#: and the other formats browsers show and Pillow decodes (WebP, AVIF, GIF: its first frame,
#: BMP, TIFF: its first page).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".pjpeg", ".pjp", ".png", ".webp", ".avif",
                  ".gif", ".bmp", ".tif", ".tiff")
#: Pillow's names for those formats, as read from the bytes (a camera JPEG with a second,
#: preview picture is ``MPO``): what an upload's content must be, whatever its name.
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "AVIF", "GIF", "BMP", "DIB", "TIFF"})
#: Named in messages.
FORMAT_NAMES = "JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF"
#: JPEG quality of the augmented store.
JPEG_QUALITY = 92
#: ImageNet channel statistics, RGB in [0, 1] (torchvision's VGG-16 weights expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully into an 8-bit sRGB image, upright, on white.

    The pixels are those a colour-managed viewer shows:

    - **colour**: an embedded ICC profile (JPEG, PNG ``iCCP``, WebP, AVIF, TIFF; RGB, CMYK and
      greyscale profiles, any bit depth) converts to sRGB with littleCMS (`PIL.ImageCms`),
      intent perceptual (`RENDERING_INTENT`); a PNG without ``iCCP`` is converted by its
      ``sRGB`` chunk (nothing to do) or else its ``gAMA`` and ``cHRM`` chunks (`_png_gamma`),
      as browsers do. A profile that littleCMS cannot parse, or one for another colour space
      than the pixels', is ignored: the pixels are read as stored. EXIF ``ColorSpace`` is not
      colour metadata here (browsers ignore it too): without a profile, pixels are sRGB.
    - **transparency**: alpha (RGBA, LA, palette or greyscale/RGB with ``tRNS``, 16-bit with
      alpha) is composited onto white after the colour conversion, as a page with a white
      background shows a cut-out.
    - **modes**: greyscale, palette, CMYK and YCbCr images become RGB; 16-bit greyscale maps
      0..65535 to 0..255 (32-bit integer images are read as 16-bit values).
    - **orientation**: an EXIF orientation is applied, as photo viewers do. An EXIF block that
      Pillow cannot parse (a tag of the wrong type, a truncated IFD) is ignored.

    Raises
    ------
    FashionError
        If the bytes are not a decodable image (truncated, not an image at all, or so large
        that Pillow refuses it as a decompression bomb). Every exception Pillow raises while
        decoding becomes this one line naming ``name``.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            info = dict(image.info)
            image = _upright(_eight_bit(image, info))
            image = _to_srgb(image, info)
            return _on_white(image)
    except UnidentifiedImageError:  # its message holds a memory address: not reproducible
        raise FashionError(f"{display_name(name)}: not a readable image (not a {FORMAT_NAMES} "
                           "image)") from None
    except FashionError:
        raise
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types on bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FashionError(f"{display_name(name)}: not a readable image ({reason})") from None


def display_name(name: str | os.PathLike) -> str:
    """A file name fit for a message, a log or JSON: bytes that are not UTF-8 (a Latin-1 name
    from an old archive, decoded by Python with ``surrogateescape``) shown as ``\\xe9``."""
    text = os.fspath(name)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def image_format(data: bytes) -> str | None:
    """Pillow's name for the format of ``data`` (``JPEG``, ``PNG``...), from its content, or
    None when Pillow does not recognise it. Only the header is read.

    Raises
    ------
    PIL.Image.DecompressionBombError
        If the header declares far more pixels than Pillow will decode.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Image.DecompressionBombError:
        raise
    except Exception:  # noqa: BLE001 -- not an image, or a header Pillow cannot parse
        return None


#: littleCMS rendering intent for profile -> sRGB. Perceptual is the ICC default and what
#: Firefox uses; for the matrix/TRC profiles photos carry (Adobe RGB, Display P3, camera RGB)
#: it is the same transform as relative colorimetric, and for LUT profiles (CMYK press
#: profiles) it maps the gamut as the profile's maker intended.
RENDERING_INTENT = ImageCms.Intent.PERCEPTUAL


def _eight_bit(image: Image.Image, info: dict) -> Image.Image:
    """``image`` as one of L, LA, RGB, RGBA or CMYK, 8 bits per channel, alpha kept."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        grey = Image.fromarray(np.clip(np.round(array / 257), 0, 255).astype(np.uint8), "L")
        key = info.get("transparency")
        if isinstance(key, int):  # 16-bit greyscale tRNS: one transparent grey level
            alpha = np.where(np.asarray(image, dtype=np.int64) == key, 0, 255).astype(np.uint8)
            grey = Image.merge("LA", (grey, Image.fromarray(alpha, "L")))
        return grey
    if image.mode in ("L", "RGB") and "transparency" in info:
        return image.convert("LA" if image.mode == "L" else "RGBA")
    if image.mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in info else "RGB")
    if image.mode in ("PA", "RGBa", "RGBX") or "A" in image.mode or "a" in image.mode:
        return image.convert("RGBA")
    if image.mode == "La":
        return image.convert("LA")
    return image.convert("RGB")  # 1, F, YCbCr, LAB, HSV


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    """littleCMS's built-in sRGB profile, built once."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=32)
def _converter(icc: bytes, mode: str) -> Callable[[Image.Image], Image.Image] | None:
    """profile ``icc`` -> sRGB for ``mode`` pixels (L, RGB or CMYK), or None when the profile
    is unparsable or describes another colour space. Cached: photos from one camera share it.

    Grey converts through a 256-entry table computed without littleCMS's 8-bit optimisation
    (which is 7 levels off in the shadows of a linear-light grey profile).
    """
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        if {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}[mode] != space:
            return None
        flags = ImageCms.Flags.NOOPTIMIZE if mode == "L" else ImageCms.Flags.NONE
        transform = ImageCms.buildTransform(profile, _srgb(), mode, "RGB",
                                            renderingIntent=RENDERING_INTENT, flags=flags)
        if mode != "L":
            return functools.partial(ImageCms.applyTransform, transform=transform)
        ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(1, 256))
        table = np.asarray(ImageCms.applyTransform(ramp, transform))[0]
        return lambda image: Image.fromarray(table[np.asarray(image)])
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, KeyError):
        return None


def _to_srgb(image: Image.Image, info: dict) -> Image.Image:
    """An L, LA, RGB, RGBA or CMYK image -> RGB or RGBA in sRGB, through its colour metadata;
    alpha passes through untouched."""
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    colour = image.convert(image.mode[:-1]) if alpha is not None else image
    icc = info.get("icc_profile")
    convert = _converter(bytes(icc), colour.mode) if icc else None
    if convert is not None:
        colour = convert(colour)
    elif not icc and "srgb" not in info and "gamma" in info and colour.mode in ("L", "RGB"):
        colour = _png_gamma(colour, info["gamma"], info.get("chromaticity"))
    colour = colour.convert("RGB")
    if alpha is None:
        return colour
    colour.putalpha(alpha)
    return colour


#: sRGB primaries and D65 white, xy (IEC 61966-2-1), as a PNG cHRM chunk orders them.
SRGB_CHROMATICITY = (0.3127, 0.3290, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)


def _rgb_to_xyz(chromaticity: tuple[float, ...]) -> np.ndarray:
    """The (3, 3) linear RGB -> XYZ matrix of white x, y and red, green, blue x, y (white Y=1)."""
    wx, wy, *primaries = chromaticity
    xy = np.array(primaries, dtype=np.float64).reshape(3, 2)
    columns = np.stack([xy[:, 0] / xy[:, 1], np.ones(3),
                        (1 - xy[:, 0] - xy[:, 1]) / xy[:, 1]])  # XYZ of each primary, Y = 1
    white = np.array([wx / wy, 1.0, (1 - wx - wy) / wy])
    return columns * np.linalg.solve(columns, white)


def _bradford(source_white: np.ndarray, target_white: np.ndarray) -> np.ndarray:
    """The Bradford chromatic adaptation matrix between two XYZ whites."""
    cone = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])
    gain = (cone @ target_white) / (cone @ source_white)
    return np.linalg.solve(cone, np.diag(gain) @ cone)


def _png_gamma(image: Image.Image, gamma: float, chromaticity: tuple | None) -> Image.Image:
    """Convert an L or RGB image stored with PNG ``gAMA`` (and ``cHRM``) to sRGB.

    PNG specification 3rd ed., 12.2 and 13.13: ``sample = light ** gamma``; with ``cHRM`` the
    linear light is in the file's primaries and white, adapted to D65 (Bradford) and then
    expressed in sRGB's; without it, sRGB's primaries are assumed. A ``gAMA`` of 1/2.2
    (45455, the value most writers put for sRGB) without other primaries is read as sRGB, as
    libpng does. Out-of-gamut colours are clipped.
    """
    srgb_like = chromaticity is None or np.allclose(chromaticity, SRGB_CHROMATICITY, atol=0.01)
    if not 0.01 < gamma < 10 or (abs(gamma - 1 / 2.2) < 0.005 and srgb_like):
        return image  # an absurd gAMA is ignored (libpng); 1/2.2 is sRGB
    linear = (np.asarray(image, dtype=np.float64) / 255) ** (1 / gamma)
    if image.mode == "RGB" and not srgb_like:
        try:
            source = _rgb_to_xyz(chromaticity)
            target = _rgb_to_xyz(SRGB_CHROMATICITY)
            adapt = _bradford(source @ np.ones(3), target @ np.ones(3))
            matrix = np.linalg.solve(target, adapt @ source)
        except (np.linalg.LinAlgError, ZeroDivisionError, ValueError):
            matrix = np.eye(3)  # degenerate cHRM: gamma only
        linear = np.clip(linear @ matrix.T, 0, 1)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear,
                       1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return Image.fromarray(np.clip(np.round(encoded * 255), 0, 255).astype(np.uint8),
                           image.mode)


def _on_white(image: Image.Image) -> Image.Image:
    """An RGB or RGBA image -> RGB, alpha composited onto white (255, 255, 255)."""
    if image.mode != "RGBA":
        return image
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def _upright(image: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``, or the image as stored when its EXIF cannot be parsed."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 -- struct.error, TypeError, ValueError, ... on bad EXIF
        return image


def resize(image: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` (squashing the aspect ratio, as the paper does)."""
    return image.resize((size, size), Image.Resampling.BILINEAR)


def encode_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes of an RGB image at `JPEG_QUALITY`."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """Stored JPEG bytes -> uint8 array of shape (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def model_input(image: Image.Image, size: int) -> np.ndarray:
    """An upright RGB photo -> the uint8 (size, size, 3) array a stored training image would be.

    Resized, JPEG-encoded and decoded exactly as the augment stage stores copy 0 of a photo and
    the featurize stage reads it back.
    """
    return decode_rgb(encode_jpeg(resize(image, size)))


def normalize(batch):
    """uint8 NHWC images (torch tensor) -> float32 NCHW normalised with ImageNet mean and std."""
    import torch

    x = batch.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
