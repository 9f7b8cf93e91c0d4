"""Training of the trainable rest of VGG-16 and the head on stored frozen-trunk features.

A plain, explicit loop in the style of torchvision's reference ``train.py``: one function per
epoch, the loss written out, a checkpoint after every epoch so a killed run resumes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import mmap
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fashiondvc.choices import OPTIMIZERS
from fashiondvc.errors import FashionError
from fashiondvc.features import autocast, resolve_device
from fashiondvc.io import atomic_path
from fashiondvc.metrics import micro_f1


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                 k: float) -> torch.Tensor:
    """The paper's weighted binary cross-entropy, with missing labels masked out.

    For each observed label, ``-(k * y * log(p) + (1 - y) * log(1 - p))`` with
    ``p = sigmoid(logit)``; summed over an image's labels and averaged over images (this is the
    scale of the paper's reported losses, about 6 for 11 labels at k = 2).
    """
    pos_weight = torch.tensor(k, dtype=logits.dtype, device=logits.device)
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none")
    return (losses * mask).sum() / max(len(logits), 1)


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


class FeatureSet(Dataset):
    """Rows of a memory-mapped feature array with their targets and observed-mask.

    Rows that fit `RAM_BUDGET_BYTES` are read into memory once, in the stored dtype (fp16:
    about 0.7 GB for the train rows at ``frozen_convs=13``); larger sets are read batch by
    batch with `read_rows`, so resident memory stays one batch whatever the file size.
    """

    def __init__(self, features: np.ndarray, rows: np.ndarray, targets: np.ndarray,
                 mask: np.ndarray, *, in_memory: bool | None = None):
        self.features, self.rows = features, np.asarray(rows)
        self.targets = torch.from_numpy(targets[self.rows].astype(np.float32))
        self.mask = torch.from_numpy(mask[self.rows].astype(np.float32))
        nbytes = len(self.rows) * int(np.prod(features.shape[1:])) * features.dtype.itemsize
        if in_memory is None:
            in_memory = nbytes <= RAM_BUDGET_BYTES
        self.cache = read_rows(features, self.rows) if in_memory else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, m = self.__getitems__([i])
        return x[0], y[0], m[0]

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, ...]:
        # rows in file order: sequential reads, and the same batch layout (hence the same
        # dropout draws) whether or not the rows are in memory
        items = np.asarray(items, dtype=np.int64)
        items = items[np.argsort(self.rows[items], kind="stable")]
        if self.cache is not None:
            x = self.cache[torch.from_numpy(items)]
        else:
            x = read_rows(self.features, self.rows[items])
        return x.float(), self.targets[items], self.mask[items]


@dataclass
class TrainConfig:
    """What one training run needs besides the network and the data."""

    k: float
    lr: float
    epochs: int
    batch_size: int
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    threshold: float = 0.5

    def validate(self) -> None:
        if self.k <= 0:
            raise FashionError(f"k: must be > 0, got {self.k}")
        if self.lr <= 0:
            raise FashionError(f"lr: must be > 0, got {self.lr}")
        if self.epochs < 1:
            raise FashionError(f"train.epochs: must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise FashionError(f"train.batch_size: must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise FashionError(f"train.optimizer: must be one of {OPTIMIZERS}, "
                               f"got {self.optimizer!r}")


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer over ``net``'s trainable parameters (call after moving ``net``).

    Adam is the fused single-kernel version on CPU and CUDA: the default one makes about ten
    passes over the 6.4M weights of the first dense layer per step and took half the step time
    on a 2-core CPU (see bench/).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9,
                               weight_decay=config.weight_decay)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                            fused=fused or None)


def loader(dataset: FeatureSet, batch_size: int, *, shuffle: bool, seed: int,
           epoch: int = 0) -> DataLoader:
    """Batches in a fixed order per (seed, epoch), so a resumed run sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    sampler = torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle
        else torch.utils.data.SequentialSampler(dataset), batch_size, drop_last=False)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_already_batched)


def _already_batched(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch  # FeatureSet.__getitems__ returns whole batches


def train_one_epoch(net: nn.Module, data: DataLoader, optimizer: torch.optim.Optimizer,
                    config: TrainConfig, device: torch.device, desc: str) -> float:
    """One pass over the training batches; returns the mean loss per image."""
    net.train()
    total, count = 0.0, 0
    for x, y, m in tqdm(data, desc=desc, unit="batch", leave=False, disable=None):
        x, y, m = x.to(device), y.to(device), m.to(device)
        with autocast(device, config.precision):
            logits = net(x)
        loss = weighted_bce(logits.float(), y, m, config.k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
        count += len(x)
    return total / max(count, 1)


@torch.inference_mode()
def predict(net: nn.Module, data: DataLoader, device: torch.device,
            precision: str = "fp32") -> np.ndarray:
    """Sigmoid probabilities for every row of ``data``, in order."""
    net.eval()
    chunks = []
    for x, *_ in tqdm(data, desc="predict", unit="batch", leave=False, disable=None):
        with autocast(device, precision):
            logits = net(x.to(device))
        chunks.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def mean_loss(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, k: float) -> float:
    """`weighted_bce` from probabilities (clipped like Keras, to keep log finite)."""
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    losses = -(k * targets * np.log(p) + (1 - targets) * np.log(1 - p))
    return float((losses * mask).sum() / max(len(probs), 1))


def fingerprint(**parts: object) -> str:
    """A short hash identifying a training setup, so a checkpoint resumes only the same run."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit(net: nn.Module, train_set: FeatureSet, test_set: FeatureSet, config: TrainConfig, *,
        checkpoint: str | os.PathLike | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``net`` for ``config.epochs``; return one history row per epoch.

    Each row holds ``epoch``, ``train_loss``, ``test_loss`` and ``test_f1`` (micro F1 at
    ``config.threshold``). With ``checkpoint``, the model, optimizer, random state and history
    are saved after every epoch (before ``on_epoch`` is called), and a run started with an
    existing checkpoint continues from it, ending bit-identical to an uninterrupted run. A
    checkpoint that cannot be used is ignored with a warning and training starts over.
    """
    config.validate()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    net.to(device)
    optimizer = make_optimizer(net, config)
    history: list[dict] = []
    if checkpoint and Path(checkpoint).exists():
        initial = copy.deepcopy(net.state_dict())
        try:
            history = resume(checkpoint, net, optimizer, device, config.epochs)
            print(f"resuming from {checkpoint} after epoch {len(history)}")
        except Exception as exc:  # corrupt, or from another version of the code
            print(f"warning: cannot resume from {checkpoint} ({type(exc).__name__}: {exc}); "
                  "training from the start", file=sys.stderr)
            net.load_state_dict(initial)
            optimizer = make_optimizer(net, config)
            torch.manual_seed(config.seed)
            history = []
    test_loader = loader(test_set, config.batch_size, shuffle=False, seed=config.seed)
    for epoch in range(len(history) + 1, config.epochs + 1):
        train_loader = loader(train_set, config.batch_size, shuffle=True, seed=config.seed,
                              epoch=epoch)
        train_loss = train_one_epoch(net, train_loader, optimizer, config, device,
                                     desc=f"epoch {epoch}/{config.epochs}")
        probs = predict(net, test_loader, device, config.precision)
        targets, mask = test_set.targets.numpy(), test_set.mask.numpy()
        row = {"epoch": epoch, "train_loss": train_loss,
               "test_loss": mean_loss(probs, targets, mask, config.k),
               "test_f1": micro_f1(targets, probs >= config.threshold, mask)}
        history.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()))
        if checkpoint:
            save_checkpoint(checkpoint, net, optimizer, history, device)
        if on_epoch:
            on_epoch(row)
    return history


def save_checkpoint(path: str | os.PathLike, net: nn.Module, optimizer: torch.optim.Optimizer,
                    history: list[dict], device: torch.device | None = None) -> None:
    """Save everything `fit` needs to resume, atomically (CPU and, on CUDA, GPU random state)."""
    state = {"net": net.state_dict(), "optimizer": optimizer.state_dict(),
             "history": json.dumps(history), "rng": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def resume(path: str | os.PathLike, net: nn.Module, optimizer: torch.optim.Optimizer,
           device: torch.device, epochs: int) -> list[dict]:
    """Restore ``net``, ``optimizer`` and the random state from a checkpoint; return its history.

    Loaded with ``weights_only=True`` onto the CPU (random states must stay there); raises if
    the checkpoint does not fit ``net`` or holds more than ``epochs`` epochs.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    history = json.loads(state["history"])
    if not isinstance(history, list) or len(history) > epochs:
        raise ValueError(f"history of {len(history)} epochs, expected at most {epochs}")
    expected = net.state_dict()
    mismatched = [key for key in expected if key not in state["net"]
                  or state["net"][key].shape != expected[key].shape]
    if mismatched or set(state["net"]) - set(expected):
        raise ValueError(f"weights do not fit the network (first: {mismatched[:1]})")
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return history


@dataclass
class Splits:
    """Stored features with per-row targets, the observed-mask and the train/test rows."""

    features: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray

    def subset(self, rows: np.ndarray) -> FeatureSet:
        return FeatureSet(self.features, rows, self.targets, self.mask)


def load_splits(labels_csv: str | os.PathLike, split_csv: str | os.PathLike,
                features_npy: str | os.PathLike, names: list[str]) -> Splits:
    """Join the ingested labels, the split and the stored features, row by row."""
    import pandas as pd

    from fashiondvc.dataset import targets_for
    from fashiondvc.features import load_features

    labels = pd.read_csv(labels_csv)
    split = pd.read_csv(split_csv).sort_values("index")
    features = load_features(features_npy)
    if len(features) != len(split):
        raise FashionError(f"{features_npy}: {len(features)} rows, but {split_csv} has "
                           f"{len(split)}; rerun the pipeline")
    targets, mask = targets_for(labels, split["image_id"].tolist(), names)
    is_test = (split["subset"] == "test").to_numpy()
    return Splits(features, targets, mask, np.flatnonzero(~is_test), np.flatnonzero(is_test))
