"""Deterministic augmentation: each photo -> its resized original plus random variants.

Every source photo becomes copy 0 (the photo resized) plus ``copies`` random variants. A variant
depends only on ``(seed, image_id, copy)``, so the result does not depend on worker count or order.
Colour is never jittered in hue: the colour attributes must stay true.

The result is written as an image store (`fashiondvc.store`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from fashiondvc.io import atomic_path, write_csv
from fashiondvc.preprocess import encode_jpeg, load_rgb, resize
from fashiondvc.progress import progress
from fashiondvc.store import ShardWriter


def random_variant(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """One augmented variant: random crop, flip, small rotation, brightness and contrast."""
    width, height = image.size
    scale = rng.uniform(0.75, 1.0)
    crop_w, crop_h = max(int(width * scale), 1), max(int(height * scale), 1)
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
    return resize(image, size)


def variants(data: bytes, name: str, image_id: int, copies: int, size: int,
             seed: int) -> list[bytes]:
    """JPEG bytes of copy 0 (resized original) and ``copies`` variants of one source photo."""
    image = load_rgb(data, name)
    out = [resize(image, size)]
    for copy in range(1, copies + 1):
        rng = np.random.default_rng([seed, image_id, copy])
        out.append(random_variant(image, size, rng))
    return [encode_jpeg(variant) for variant in out]


def _variants_of_file(args: tuple[Path, int, int, int, int]) -> list[bytes]:
    path, image_id, copies, size, seed = args
    return variants(path.read_bytes(), str(path), image_id, copies, size, seed)


def augment_folder(images_dir: str | os.PathLike, image_ids: Sequence[int],
                   out_dir: str | os.PathLike, *, copies: int, size: int, seed: int,
                   workers: int = 0) -> pd.DataFrame:
    """Augment ``images_dir/%06d.jpg`` for each id into a sharded store at ``out_dir``.

    Parameters
    ----------
    copies : int
        Augmented variants per photo, besides the resized original (paper: 10).
    size : int
        Output side in pixels (paper: 224).
    workers : int
        Processes for decoding and encoding; 0 = all CPUs.

    Returns
    -------
    DataFrame
        The store's index.
    """
    images_dir = Path(images_dir)
    jobs = [(images_dir / f"{int(i):06d}.jpg", int(i), copies, size, seed) for i in image_ids]
    workers = workers or os.cpu_count() or 1
    rows = []
    with atomic_path(out_dir, is_dir=True) as tmp, _Pool(workers) as pool, \
            ShardWriter(tmp) as writer:
        results = pool.map(_variants_of_file, jobs, chunksize=8)
        for (_, image_id, *_), encoded in progress(zip(jobs, results, strict=True),
                                                   total=len(jobs), desc="augment", unit="photo"):
            for copy, data in enumerate(encoded):
                shard, offset = writer.append(data)
                rows.append((len(rows), image_id, copy, shard, offset, len(data)))
        index = pd.DataFrame(rows, columns=["index", "image_id", "copy", "shard", "offset",
                                            "length"])
        write_csv(tmp / "index.csv", index)
    return index


class _Pool:
    """A process pool, or plain in-process ``map`` for one worker (easier to debug, no fork)."""

    def __init__(self, workers: int):
        self.executor = ProcessPoolExecutor(workers) if workers > 1 else None

    def map(self, fn, items, chunksize: int = 1) -> Iterator:
        if self.executor is None:
            return map(fn, items)
        return self.executor.map(fn, items, chunksize=chunksize)

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


def augment_ingested(ingested: str | os.PathLike, out_dir: str | os.PathLike, params
                     ) -> pd.DataFrame:
    """The augment stage: every ingested photo into the store at ``out_dir``, with
    `fashiondvc.params.AugmentParams` ``params``; returns the store's index."""
    from fashiondvc.dataset import read_ingested

    labels = read_ingested(ingested)
    return augment_folder(Path(ingested) / "images", labels["image_id"], out_dir,
                          copies=params.copies, size=params.image_size, seed=params.seed,
                          workers=params.workers)
