"""The image store: augmented images as a few shards of JPEG bytes plus an index.

A store is a folder with ``index.csv`` (one row per image: ``index, image_id, copy, shard,
offset, length``) and ``shard-NNNNN.bin`` files of concatenated JPEG bytes, `SHARD_IMAGES`
images each, because DVC handles a few large files far better than 20k small ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fashiondvc.errors import FashionError
from fashiondvc.preprocess import decode_rgb

SHARD_IMAGES = 4096


class ShardWriter:
    """Append JPEG bytes to ``shard-NNNNN.bin`` files of at most `SHARD_IMAGES` images each."""

    def __init__(self, folder: Path, shard_images: int = SHARD_IMAGES):
        self.folder, self.shard_images = folder, shard_images
        self.count, self.handle, self.offset = 0, None, 0

    def append(self, data: bytes) -> tuple[int, int]:
        shard = self.count // self.shard_images
        if self.count % self.shard_images == 0:
            self.close()
            self.handle = open(self.folder / f"shard-{shard:05d}.bin", "wb")  # noqa: SIM115
            self.offset = 0
        offset = self.offset
        self.handle.write(data)
        self.offset += len(data)
        self.count += 1
        return shard, offset

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageStore:
    """Read access to an augmented store: ``len(store)``, ``store[i]`` -> RGB uint8 array (H, W, 3).

    Shards are memory-mapped lazily, so a store can be handed to DataLoader workers cheaply.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_path = self.folder / "index.csv"
        if not index_path.exists():
            raise FashionError(f"{index_path} does not exist: run the augment stage first")
        self.index = pd.read_csv(index_path)
        self._location = self.index[["shard", "offset", "length"]].to_numpy()
        self._shards: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.index)

    def jpeg(self, i: int) -> bytes:
        shard, offset, length = (int(v) for v in self._location[i])
        if shard not in self._shards:
            self._shards[shard] = np.memmap(self.folder / f"shard-{shard:05d}.bin", mode="r")
        return self._shards[shard][offset:offset + length].tobytes()

    def __getitem__(self, i: int) -> np.ndarray:
        return decode_rgb(self.jpeg(i))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}}
