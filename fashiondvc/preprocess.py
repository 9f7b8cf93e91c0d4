"""Image preprocessing, one definition for training inputs, the search index and queries.

Every image the network sees goes the same way: decode upright to 8-bit RGB (`load_rgb`),
squash to ``size`` x ``size`` (`resize`, as the paper "resized"), store as JPEG (`encode_jpeg`,
quality `JPEG_QUALITY`), decode (`decode_rgb`), normalise with ImageNet's mean and std
(`normalize`). `model_input` does the middle three for a photo that skips the augmented store
(index and query), so its pixels are those a training image of the same photo would have.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashiondvc.errors import FashionError

#: Photo file names the product reads (ingest, index, search).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: JPEG quality of the augmented store.
JPEG_QUALITY = 92
#: ImageNet channel statistics, RGB in [0, 1] (torchvision's VGG-16 weights expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully into an 8-bit RGB image, upright.

    Greyscale, palette, CMYK and alpha images convert to RGB; 16-bit greyscale maps 0..65535 to
    0..255 (32-bit integer images are read as 16-bit values); an EXIF orientation is applied, as
    photo viewers do. An EXIF block that Pillow cannot parse (a tag of the wrong type, a
    truncated IFD) is ignored: the pixels are read as stored.

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
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                return Image.fromarray(np.clip(np.round(array / 257), 0, 255).astype(np.uint8),
                                       "L").convert("RGB")
            return _upright(image).convert("RGB")
    except UnidentifiedImageError:  # its message holds a memory address: not reproducible
        raise FashionError(f"{name}: not a readable image (not an image format Pillow "
                           "knows)") from None
    except FashionError:
        raise
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types on bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FashionError(f"{name}: not a readable image ({reason})") from None


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
