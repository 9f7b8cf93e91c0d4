"""A generated sample of the Clothing Attribute Dataset, in the official archive layout.

Used by the tests and the offline demo. Each photo is a plain background with a "garment" whose
colours follow its colour labels, so a model can learn something from it even with random weights.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from fashiondvc.io import atomic_path
from fashiondvc.labels import ATTRIBUTES, COLOURS, N_CLASSES

RGB = {
    "red": (200, 30, 30), "yellow": (230, 210, 40), "green": (40, 160, 60),
    "cyan": (40, 200, 210), "blue": (30, 60, 200), "purple": (130, 40, 160),
    "brown": (120, 75, 35), "white": (245, 245, 245), "gray": (128, 128, 128),
    "black": (15, 15, 15),
}
ROOT = "ClothingAttributeDataset"


def sample_labels(n_images: int, rng: np.random.Generator,
                  missing_rate: float = 0.1) -> dict[str, np.ndarray]:
    """Random labels coded like the real ones (1..K, NaN = missing), one colour or two per photo."""
    labels = {name: rng.integers(1, N_CLASSES[name] + 1, n_images).astype(np.float64)
              for name in ATTRIBUTES}
    plain = [c for c in COLOURS if c != "many_colors"]
    for name in plain:
        labels[name][:] = 1
    for i in range(n_images):
        chosen = rng.choice(plain, size=rng.integers(1, 4), replace=False)
        for name in chosen:
            labels[name][i] = 2
        labels["many_colors"][i] = 2 if len(chosen) > 2 else 1
    colour_missing = rng.random(n_images) < missing_rate  # like the real data: all 11 at once
    for name in ATTRIBUTES:
        missing = colour_missing if name in COLOURS else rng.random(n_images) < missing_rate
        labels[name][missing] = np.nan
    return labels


def draw_photo(colours: list[str], rng: np.random.Generator) -> Image.Image:
    """A photo-like picture: background, a head, and a garment striped in ``colours``."""
    width, height = int(rng.integers(64, 129)), int(rng.integers(96, 193))
    background = tuple(int(v) for v in rng.integers(60, 200, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    cx = width // 2 + int(rng.integers(-width // 8, width // 8 + 1))
    head = [cx - width // 8, height // 12, cx + width // 8, height // 4]
    draw.ellipse(head, fill=(225, 190, 160))
    top, bottom = height // 4, height * 9 // 10
    left, right = cx - width // 3, cx + width // 3
    band = max((bottom - top) // max(len(colours), 1), 1)
    for j, colour in enumerate(colours or ["gray"]):
        draw.rectangle([left, top + j * band, right, top + (j + 1) * band], fill=RGB[colour])
    noise = rng.normal(0, 6, (height, width, 3))
    array = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def make_sample_archive(path: str | os.PathLike, n_images: int = 64, seed: int = 0,
                        *, folder: bool = False) -> Path:
    """Write a sample dataset of ``n_images`` photos as a zip (or a folder if ``folder``).

    Returns
    -------
    Path
        The zip file, or the dataset root folder holding ``images/`` and ``labels/``.
    """
    rng = np.random.default_rng(seed)
    labels = sample_labels(n_images, rng)
    members: dict[str, bytes] = {f"{ROOT}/README": b"Generated sample of the Clothing Attribute "
                                 b"Dataset layout (fashiondvc.sample).\n"}
    for i in range(n_images):
        colours = [c for c in RGB if labels[c][i] == 2]
        buffer = io.BytesIO()
        draw_photo(colours, rng).save(buffer, format="JPEG", quality=90)
        members[f"{ROOT}/images/{i + 1:06d}.jpg"] = buffer.getvalue()
    for name, values in labels.items():
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {"GT": values.reshape(-1, 1)})
        members[f"{ROOT}/labels/{name}_GT.mat"] = buffer.getvalue()
    path = Path(path)
    if folder:
        with atomic_path(path, is_dir=True) as tmp:
            for name, data in members.items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return path / ROOT
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(members):
            # fixed timestamps so the same seed gives the same bytes (and sha256)
            info = zipfile.ZipInfo(name, date_time=(2017, 10, 1, 0, 0, 0))
            archive.writestr(info, members[name])
    return path
