"""The stored features: the frozen trunk run once over every image, written and read back.

VGG-16 has no batch norm, so the frozen trunk is a pure function of the image: every experiment
that shares ``model.weights`` and ``model.frozen_convs`` reuses the same stored features.

A features folder holds

``features.npy``
    The trunk's output, shape ``(n_images, C, H, W)``, float16 (float32 for ``fp32`` runs).
``side.npy``
    Global average and global max of every max-pool output *inside* the trunk (pool1..pool4
    for ``frozen_convs`` 10..13), shape ``(n_images, 2 * sum(channels))``, float32: colour and
    texture at finer scales for heads that want them (``model.head: multiscale``). 1920 values
    (7.5 KB) per image.
``meta.json``
    Shapes and the settings that produced them.

This module owns the format: `featurize` writes it, `read_rows` and `load_features` read it.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashiondvc.errors import FashionError
from fashiondvc.preprocess import normalize
from fashiondvc.progress import progress
from fashiondvc.runtime import compute_dtype, prepare_trunk, release_free_memory, resolve_device


def storage_dtype(precision: str) -> np.dtype:
    """On-disk dtype for features: float16 halves the size; fp32 runs keep float32."""
    return np.dtype(np.float32 if precision == "fp32" else np.float16)


def side_width(frozen: nn.Module) -> int:
    """Width of a ``side.npy`` row for this trunk: 2 x the channels of each inner max-pool."""
    return 2 * sum(_pool_channels(frozen))


def _pool_channels(frozen: nn.Module) -> list[int]:
    channels, out = 3, []
    layers = list(frozen)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d) and i < len(layers) - 1:
            out.append(channels)
    return out


def run_trunk(frozen: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(trunk output, side features)`` of a normalised batch.

    Side features: per inner max-pool, the global average then the global max over H, W, in
    layer order; shape ``(n, side_width(frozen))``, float32.
    """
    layers = list(frozen)
    side = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d) and i < len(layers) - 1:
            side += [x.float().mean(dim=(2, 3)), x.float().amax(dim=(2, 3))]
    empty = torch.zeros(len(x), 0)
    return x, (torch.cat(side, dim=1) if side else empty)


class ImageTensors(Dataset):
    """uint8 HWC tensors from any ``store[i] -> ndarray`` (JPEG decode happens in workers)."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.store[i]))


class NpyWriter:
    """Append rows to a ``.npy`` file of known shape with plain writes (not a memory map).

    Written pages go to the page cache, not to this process's resident memory, so peak memory
    stays one batch whatever the size of the array (a writable memmap would count every page
    it touched as resident: 4 GB for ``frozen_convs=12``).
    """

    def __init__(self, path: str | os.PathLike, dtype: np.dtype, shape: tuple[int, ...]):
        self.dtype, self.shape, self.rows = np.dtype(dtype), shape, 0
        self.handle = open(path, "wb")  # noqa: SIM115 -- closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": shape}
        np.lib.format.write_array_header_2_0(self.handle, header)

    def append(self, rows: np.ndarray) -> None:
        """Write ``rows`` (shape ``(n, *shape[1:])``) after the rows already written."""
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise FashionError(f"features: got rows of {rows.shape} after {self.rows} rows, "
                               f"expected {self.shape}")
        self.handle.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self.rows += len(rows)

    def close(self) -> None:
        """Flush and close (again is fine); raise if fewer rows than the header promises."""
        self.handle.close()
        if self.rows != self.shape[0]:
            raise FashionError(f"features: wrote {self.rows} of {self.shape[0]} rows")


@torch.inference_mode()
def featurize(store, frozen: nn.Module, out_dir: str | os.PathLike, *,
              feature_shape: tuple[int, int, int], batch_size: int = 32, workers: int = 2,
              precision: str = "bf16", device: str = "auto") -> Path:
    """Write ``features.npy`` and ``side.npy`` for every image of ``store`` into ``out_dir``.

    Rows follow the store's order. ``features.npy`` has shape ``(len(store), *feature_shape)``
    (float16, or float32 for fp32); both files are streamed, so peak memory is a few batches
    whatever the dataset. ``frozen`` is moved and cast in place (see `prepare_trunk`). The
    caller makes ``out_dir`` atomic.
    """
    target = resolve_device(device, "featurize.device")
    dtype = compute_dtype(target, precision)
    frozen = prepare_trunk(frozen, target, dtype)
    loader = DataLoader(ImageTensors(store), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=target.type == "cuda",
                        persistent_workers=False)
    out_dir = Path(out_dir)
    writer = NpyWriter(out_dir / "features.npy", storage_dtype(precision),
                       (len(store), *feature_shape))
    side = NpyWriter(out_dir / "side.npy", np.float32, (len(store), side_width(frozen)))
    out_dtype = torch.float32 if writer.dtype == np.float32 else torch.float16
    try:
        for batch in progress(loader, desc="featurize", unit="batch"):
            x = normalize(batch.to(target, non_blocking=True))
            x = x.to(dtype=dtype, memory_format=torch.channels_last)
            y, pooled = run_trunk(frozen, x)
            writer.append(y.to(out_dtype).contiguous().cpu().numpy())
            side.append(pooled.cpu().numpy())
            del x, y, pooled
            release_free_memory()
    finally:
        writer.handle.close()
        side.handle.close()
    writer.close()
    side.close()
    return out_dir


RAM_BUDGET_BYTES = 3 * 2**29
"""A `FeatureSet` whose rows take at most this much (1.5 GiB) holds them in memory."""


def _whole_file_map(features: np.ndarray) -> bool:
    """Whether ``features`` is a whole ``.npy`` opened by ``np.load(mmap_mode="r")``."""
    return (isinstance(features, np.memmap) and isinstance(features.base, mmap.mmap)
            and features.filename is not None and features.flags.c_contiguous
            and hasattr(os, "preadv"))


def read_rows(features: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """``features[rows]`` as a tensor in the stored dtype.

    From a memory-mapped ``.npy`` the rows are read with ``preadv``, in file order, straight
    into the tensor: no page of the file gets mapped into this process. Reading through the
    map instead mapped about 2 MB of file per 200 KB row (the kernel maps page-cache folios
    whole), so a pass over a 4.1 GB feature file (``frozen_convs=12``) made this process 4 GB
    resident; with ``preadv`` it is the rows read, and no slower (9 vs 10 ms per batch of 64).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = torch.from_numpy(np.empty((len(rows), *features.shape[1:]), dtype=features.dtype))
    target = out.numpy()
    if not _whole_file_map(features):
        target[...] = features[rows]
        return out
    row_bytes = target[0].nbytes if len(rows) else 0
    with open(features.filename, "rb") as handle:
        for i in np.argsort(rows, kind="stable"):
            offset = features.offset + int(rows[i]) * row_bytes
            if os.preadv(handle.fileno(), [target[i]], offset) != row_bytes:
                raise FashionError(f"{features.filename}: truncated at row {rows[i]}; "
                                   "rerun the featurize stage")
    return out


def load_features(path: str | os.PathLike) -> np.ndarray:
    """A stored ``.npy`` (features or side), memory-mapped read-only; read rows with `read_rows`."""
    path = Path(path)
    if not path.exists():
        raise FashionError(f"{path} does not exist: run the featurize stage first")
    return np.load(path, mmap_mode="r")
