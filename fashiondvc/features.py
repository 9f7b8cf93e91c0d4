"""Run the frozen VGG-16 trunk once over every image and stream its output to a ``.npy`` file.

VGG-16 has no batch norm, so the frozen trunk is a pure function of the image: every experiment
that shares ``model.weights`` and ``model.frozen_convs`` reuses the same stored features.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fashiondvc.choices import PRECISIONS
from fashiondvc.errors import FashionError
from fashiondvc.io import atomic_path
from fashiondvc.model import normalize


def resolve_device(device: str, param: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to `torch.device`.

    ``param`` names the parameter in error messages.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FashionError(f"{param}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FashionError(f"{param}: {device!r} requested but CUDA is not available")
    return resolved


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32).

    bf16 on a CPU without native bf16 support would be emulated and slower than fp32, so it
    falls back to fp32 there; fp16 is only used on CUDA.
    """
    if precision not in PRECISIONS:
        raise FashionError(f"precision: must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu":
        if precision == "bf16" and cpu_supports_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN can run bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and (
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def storage_dtype(precision: str) -> np.dtype:
    """On-disk dtype for features: float16 halves the size; fp32 runs keep float32."""
    return np.dtype(np.float32 if precision == "fp32" else np.float16)


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype the frozen trunk runs in: what `autocast` would pick, as a plain dtype.

    bf16 needs CUDA or a CPU with native bf16; fp16 needs CUDA; otherwise fp32.
    """
    if precision not in PRECISIONS:
        raise FashionError(f"precision: must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and (device.type == "cuda" or cpu_supports_bf16()):
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    return torch.float32


def prepare_trunk(frozen: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move the frozen trunk (in place) to ``device``, channels_last, weights cast to ``dtype``.

    Casting the weights once instead of autocast skips re-casting every weight on every batch
    and halves the trunk's weight memory; on an idle 2-core AVX-512-BF16 CPU it is within
    noise of autocast (24.2 vs 23.6 images/s for the 13-conv trunk, fp32: 12.5; bench/).
    """
    return frozen.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where there is none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim(0)``; else a no-op).

    Activations of 6-26 MB per layer are allocated and freed on every batch; glibc keeps
    freed pages, and without trimming the resident set crept up (1.1 to 1.7 GB over 40
    batches; a 3.6 GB peak over the 638 batches of the full dataset). Trimming after each
    batch keeps it flat at no measurable cost (bench/).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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
def featurize(store, frozen: nn.Module, out_path: str | os.PathLike, *,
              feature_shape: tuple[int, int, int], batch_size: int = 32, workers: int = 2,
              precision: str = "bf16", device: str = "auto") -> Path:
    """Write the frozen trunk's output for every image of ``store`` to ``out_path`` (``.npy``).

    The array has shape ``(len(store), *feature_shape)`` (float16, or float32 for fp32) and is
    streamed to a temporary file that is renamed at the end: peak memory is a few batches,
    whatever the dataset. ``frozen`` is moved and cast in place (see `prepare_trunk`).
    """
    target = resolve_device(device, "featurize.device")
    dtype = compute_dtype(target, precision)
    frozen = prepare_trunk(frozen, target, dtype)
    loader = DataLoader(ImageTensors(store), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=target.type == "cuda",
                        persistent_workers=False)
    shape = (len(store), *feature_shape)
    with atomic_path(out_path) as tmp:
        writer = NpyWriter(tmp, storage_dtype(precision), shape)
        out_dtype = torch.float32 if writer.dtype == np.float32 else torch.float16
        try:
            for batch in tqdm(loader, desc="featurize", unit="batch", disable=None):
                x = normalize(batch.to(target, non_blocking=True))
                x = x.to(dtype=dtype, memory_format=torch.channels_last)
                y = frozen(x).to(out_dtype)
                writer.append(y.contiguous().cpu().numpy())
                del x, y
                release_free_memory()
        finally:
            writer.handle.close()
        writer.close()
    return Path(out_path)


def load_features(path: str | os.PathLike) -> np.ndarray:
    """The stored features, memory-mapped read-only."""
    path = Path(path)
    if not path.exists():
        raise FashionError(f"{path} does not exist: run the featurize stage first")
    return np.load(path, mmap_mode="r")
