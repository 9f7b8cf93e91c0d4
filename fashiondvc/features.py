"""Run the frozen VGG-16 trunk once over every image and stream its output to a ``.npy`` file.

VGG-16 has no batch norm, so the frozen trunk is a pure function of the image: every experiment
that shares ``model.weights`` and ``model.frozen_convs`` reuses the same stored features.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fashiondvc.errors import FashionError
from fashiondvc.io import atomic_path
from fashiondvc.model import normalize

PRECISIONS = ("bf16", "fp16", "fp32")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to `torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise FashionError(f"train.device: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FashionError(f"train.device: {device!r} requested but CUDA is not available")
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


class ImageTensors(Dataset):
    """uint8 HWC tensors from any ``store[i] -> ndarray`` (JPEG decode happens in workers)."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.store[i]))


@torch.inference_mode()
def featurize(store, frozen: nn.Module, out_path: str | os.PathLike, *,
              feature_shape: tuple[int, int, int], batch_size: int = 32, workers: int = 2,
              precision: str = "bf16", device: str = "auto") -> Path:
    """Write the frozen trunk's output for every image of ``store`` to ``out_path`` (``.npy``).

    The array has shape ``(len(store), *feature_shape)`` and is written through a memory map to a
    temporary file that is renamed at the end: peak memory is one batch, whatever the dataset.
    """
    target = resolve_device(device)
    frozen = frozen.to(target).eval()
    if target.type == "cpu":
        frozen = frozen.to(memory_format=torch.channels_last)
    loader = DataLoader(ImageTensors(store), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=target.type == "cuda",
                        persistent_workers=False)
    with atomic_path(out_path) as tmp:
        out = open_memmap(tmp, mode="w+", dtype=storage_dtype(precision),
                          shape=(len(store), *feature_shape))
        start = 0
        for batch in tqdm(loader, desc="featurize", unit="batch", disable=None):
            x = normalize(batch.to(target, non_blocking=True))
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(target, precision):
                y = frozen(x)
            out[start:start + len(batch)] = y.float().cpu().numpy()
            start += len(batch)
        out.flush()
        del out
    return Path(out_path)


def load_features(path: str | os.PathLike) -> np.ndarray:
    """The stored features, memory-mapped read-only."""
    path = Path(path)
    if not path.exists():
        raise FashionError(f"{path} does not exist: run the featurize stage first")
    return np.load(path, mmap_mode="r")
