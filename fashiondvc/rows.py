"""Labelled rows of stored features: what train, evaluate, the index and retrieval read.

`load_splits` joins the ingested labels, the split and the stored features (`fashiondvc.features.
StoredFeatures`) row by row; `Splits.subset` gives a `FeatureSet` whose batches are `Batch`
objects: the named features a head takes, the targets and the observed-mask. `predict` runs a
network over a `FeatureSet` in order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fashiondvc import distributed
from fashiondvc.config import ExtractorConfig
from fashiondvc.errors import FashionError
from fashiondvc.features import RAM_BUDGET_BYTES, StoredFeatures, read_rows
from fashiondvc.progress import progress
from fashiondvc.runtime import autocast


@dataclass
class Batch:
    """A batch of rows: ``features`` by name (float32, shapes ``(n, *shape)``), ``targets`` and
    ``mask`` (float32, shape ``(n, n_labels)``; mask 1 where a label is observed)."""

    features: dict[str, torch.Tensor]
    targets: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device) -> Batch:
        return Batch({k: v.to(device) for k, v in self.features.items()},
                     self.targets.to(device), self.mask.to(device))


class FeatureSet(Dataset):
    """Rows of stored feature arrays (by name) with targets and observed-mask.

    The ``trunk`` rows that fit `RAM_BUDGET_BYTES` are read into memory once, in the stored
    dtype (fp16: about 0.7 GB for the train rows at ``frozen_convs=13``); larger sets are read
    batch by batch with `read_rows`, so resident memory stays one batch whatever the file size
    (always under torchrun: each rank reads only its rows, the page cache holds the file once).
    The other (vector) features are always read into memory. Items are `Batch` objects.
    """

    def __init__(self, arrays: dict[str, np.ndarray], rows: np.ndarray, targets: np.ndarray,
                 mask: np.ndarray, *, in_memory: bool | None = None):
        self.arrays, self.rows = arrays, np.asarray(rows)
        self.targets = torch.from_numpy(targets[self.rows].astype(np.float32))
        self.mask = torch.from_numpy(mask[self.rows].astype(np.float32))
        trunk = arrays["trunk"]
        nbytes = len(self.rows) * int(np.prod(trunk.shape[1:])) * trunk.dtype.itemsize
        if in_memory is None:
            in_memory = nbytes <= RAM_BUDGET_BYTES and distributed.world_size() == 1
        self.cache = {name: read_rows(array, self.rows) for name, array in arrays.items()
                      if name != "trunk" or in_memory}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, items: list[int]) -> Batch:
        # rows in file order: sequential reads, and the same batch layout (hence the same
        # dropout draws) whether or not the rows are in memory
        items = np.asarray(items, dtype=np.int64)
        items = items[np.argsort(self.rows[items], kind="stable")]
        index = torch.from_numpy(items)
        features = {name: (self.cache[name][index] if name in self.cache
                           else read_rows(array, self.rows[items])).float()
                    for name, array in self.arrays.items()}
        return Batch(features, self.targets[index], self.mask[index])


@dataclass
class Splits:
    """Stored feature arrays with per-row targets, mask and subset rows."""

    arrays: dict[str, np.ndarray]
    targets: np.ndarray
    mask: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    stored: StoredFeatures | None = None
    mirrored: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, rows: np.ndarray, mirror: bool = False) -> FeatureSet:
        """The rows ``rows``; with ``mirror``, the features of their mirrored images."""
        if mirror and self.mirrored is None:
            raise FashionError("no mirrored features loaded (load_splits(..., mirror=True))")
        return FeatureSet(self.mirrored if mirror else self.arrays, rows, self.targets,
                          self.mask)


def load_splits(labels_csv: str | os.PathLike, split_csv: str | os.PathLike,
                features_dir: str | os.PathLike, names: Sequence[str],
                inputs: Sequence[str] = ("trunk",), *,
                extractor: ExtractorConfig | None = None, mirror: bool = False) -> Splits:
    """Join the ingested labels, the split and the stored features ``inputs``, row by row.

    With ``extractor`` (a trained model's), the features must have been made by it. With
    ``mirror``, also the features of the mirrored images (``featurize.mirror``), for
    `scores` with ``tta="flip"``.

    Raises
    ------
    FashionError
        If the features do not match the split row for row, are missing or truncated, were
        made by another extractor than ``extractor``, or ``mirror`` is asked of features
        without mirrored images.
    """
    import pandas as pd

    from fashiondvc.labels import targets_for

    stored = StoredFeatures(features_dir)
    if extractor is not None and stored.config != extractor:
        raise FashionError(f"{features_dir}: made by {stored.config}, but the model takes "
                           f"features of {extractor}; rerun featurize and train")
    labels = pd.read_csv(labels_csv)
    split = pd.read_csv(split_csv).sort_values("index")
    if stored.n_images != len(split):
        raise FashionError(f"{features_dir}: {stored.n_images} rows, but {split_csv} has "
                           f"{len(split)}; rerun the pipeline")
    targets, mask = targets_for(labels, split["image_id"].tolist(), list(names))
    subset = split["subset"].to_numpy()
    return Splits(stored.arrays(inputs), targets, mask, np.flatnonzero(subset == "train"),
                  np.flatnonzero(subset == "test"), np.flatnonzero(subset == "val"), stored,
                  stored.arrays(inputs, mirror=True) if mirror else None)


def loader(dataset: FeatureSet, batch_size: int, *, shuffle: bool, seed: int,
           epoch: int = 0) -> DataLoader:
    """Batches in a fixed order per (seed, epoch), so a resumed run sees the same batches.

    Shuffled under torchrun, this rank's share of each batch (`distributed.shard`).
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    rows = (torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle
            else torch.utils.data.SequentialSampler(dataset))
    if shuffle and distributed.world_size() > 1:
        rows = distributed.shard(dataset, seed * 100_003 + epoch)
        batch_size = distributed.local_batch_size(batch_size)
    sampler = torch.utils.data.BatchSampler(rows, batch_size, drop_last=False)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_already_batched)


def _already_batched(batch: Batch) -> Batch:
    return batch  # FeatureSet.__getitems__ returns whole batches


@torch.inference_mode()
def predict(net, dataset: FeatureSet, device: torch.device, precision: str = "fp32", *,
            batch_size: int = 256, embeddings: bool = False
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs (float32, on the CPU) of ``net`` for every row of ``dataset``, in order.

    ``net.probabilities(outputs)`` turns them into label scores. With ``embeddings``, also the
    hidden layer's activations (`fashiondvc.net.AttributeNet.embed`), float32. The dataset's
    rows must be ascending (`FeatureSet` reads each batch in file order); `scores` takes any.

    Raises
    ------
    ValueError
        If the rows of ``dataset`` are not in ascending order.
    """
    if np.any(np.diff(dataset.rows) < 0):
        raise ValueError("predict: the dataset's rows must be ascending (use rows.scores)")
    net.eval()
    outputs, hidden = [], []
    batches = loader(dataset, batch_size, shuffle=False, seed=0)
    for batch in progress(batches, desc="predict", unit="batch", leave=False, steps=10):
        features = batch.to(device).features
        with autocast(device, precision):
            embedded = net.embed(features)
            out = net.out(embedded)
        outputs.append(out.float().cpu())
        hidden.append(embedded.float().cpu())
    empty = torch.zeros(0, 0)
    result = torch.cat(outputs) if outputs else empty
    return (result, torch.cat(hidden) if hidden else empty) if embeddings else result


def scores(net, data: Splits, rows: np.ndarray, device: torch.device, precision: str = "fp32",
           *, tta: str = "none", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, embeddings)`` of ``net`` for stored rows ``rows`` of ``data``, in order.

    Shapes (n, n_labels) and (n, hidden), float32; embeddings are not normalised. With
    ``tta="flip"`` (``evaluate.tta``) both are the mean over each image and its mirror
    (``data`` loaded with ``mirror=True``), as `fashiondvc.predictor.Predictor` does for a
    query photo.
    """
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")  # `predict` reads ascending rows
    views = (False, True) if tta == "flip" else (False,)
    probs, embedded = [], []
    for mirror in views:
        outputs, hidden = predict(net, data.subset(rows[order], mirror), device, precision,
                                  batch_size=batch_size, embeddings=True)
        probs.append(net.probabilities(outputs).numpy() if len(outputs)
                     else np.zeros((0, net.n_labels), np.float32))
        embedded.append(hidden.numpy())
    back = np.argsort(order, kind="stable")  # in the order ``rows`` asked for
    mean_probs = np.mean(probs, axis=0).astype(np.float32)
    mean_embedded = np.mean(embedded, axis=0).astype(np.float32)
    return (mean_probs[back] if len(rows) else mean_probs,
            mean_embedded[back] if len(rows) else mean_embedded)
