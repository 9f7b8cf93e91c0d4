"""Training of the trainable rest of VGG-16 and the head on stored frozen-trunk features.

A plain, explicit loop in the style of torchvision's reference ``train.py``: one function per
epoch, the loss written out (`fashiondvc.losses`), a checkpoint after every epoch so a killed
run resumes. With validation rows, every epoch is scored on them and ``select="best"`` keeps the
epoch with the best validation mAP (early stopping without a patience cut-off: the epochs are
few and cheap). Test rows are scored for the curves only; nothing is chosen on them.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashiondvc import distributed, losses, metrics
from fashiondvc.errors import FashionError
from fashiondvc.features import RAM_BUDGET_BYTES, load_features, read_rows
from fashiondvc.io import atomic_path
from fashiondvc.progress import progress
from fashiondvc.runtime import autocast, resolve_device


class FeatureSet(Dataset):
    """Rows of a memory-mapped feature array with side features, targets and observed-mask.

    Rows that fit `RAM_BUDGET_BYTES` are read into memory once, in the stored dtype (fp16:
    about 0.7 GB for the train rows at ``frozen_convs=13``); larger sets are read batch by
    batch with `read_rows`, so resident memory stays one batch whatever the file size (always
    under torchrun: each rank reads only its rows, the page cache holds the file once). Items
    are batches ``(x, side, y, mask)``: float32 (n, C, H, W), float32 (n, side width; 0 wide
    without side features), float32 (n, n_labels), float32 (n, n_labels).
    """

    def __init__(self, features: np.ndarray, rows: np.ndarray, targets: np.ndarray,
                 mask: np.ndarray, *, side: np.ndarray | None = None,
                 in_memory: bool | None = None):
        self.features, self.rows = features, np.asarray(rows)
        self.targets = torch.from_numpy(targets[self.rows].astype(np.float32))
        self.mask = torch.from_numpy(mask[self.rows].astype(np.float32))
        self.side = (torch.zeros(len(self.rows), 0) if side is None
                     else read_rows(side, self.rows).float())
        nbytes = len(self.rows) * int(np.prod(features.shape[1:])) * features.dtype.itemsize
        if in_memory is None:
            in_memory = nbytes <= RAM_BUDGET_BYTES and distributed.world_size() == 1
        self.cache = read_rows(features, self.rows) if in_memory else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(part[0] for part in self.__getitems__([i]))

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, ...]:
        # rows in file order: sequential reads, and the same batch layout (hence the same
        # dropout draws) whether or not the rows are in memory
        items = np.asarray(items, dtype=np.int64)
        items = items[np.argsort(self.rows[items], kind="stable")]
        index = torch.from_numpy(items)
        if self.cache is not None:
            x = self.cache[index]
        else:
            x = read_rows(self.features, self.rows[items])
        return x.float(), self.side[index], self.targets[index], self.mask[index]


@dataclass
class TrainConfig:
    """What one training run needs besides the network and the data (validated in `params`).

    ``pos_weight`` is one weight per label (`losses.positive_weights`); empty means ``k`` for
    every label.
    """

    k: float
    lr: float
    epochs: int
    batch_size: int
    optimizer: str = "adam"
    weight_decay: float = 0.0
    loss: str = "wbce"
    gamma: float = 2.0
    pos_weight: list[float] = field(default_factory=list)
    select: str = "last"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    threshold: float = 0.5

    def weights_for(self, n_labels: int) -> torch.Tensor:
        """The positive weights as a tensor of shape (n_labels,)."""
        if self.pos_weight:
            return torch.tensor(self.pos_weight, dtype=torch.float32)
        return torch.full((n_labels,), float(self.k))

    def as_dict(self) -> dict:
        return asdict(self)


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


def _already_batched(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch  # FeatureSet.__getitems__ returns whole batches


def batch_loss(net: nn.Module, outputs: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
               config: TrainConfig) -> torch.Tensor:
    """`losses.loss` of a batch with ``config``'s loss, weights and ``net``'s label coding."""
    return losses.loss(config.loss, outputs, y, m, config.weights_for(y.shape[1]),
                       config.gamma, getattr(net, "label_pca", None))


def train_one_epoch(net: nn.Module, data: DataLoader, optimizer: torch.optim.Optimizer,
                    config: TrainConfig, device: torch.device, desc: str) -> float:
    """One pass over the training batches; returns the mean loss per image."""
    net.train()
    total, count = 0.0, 0
    for x, s, y, m in progress(data, desc=desc, unit="batch", leave=False, steps=10):
        x, s, y, m = x.to(device), s.to(device), y.to(device), m.to(device)
        with autocast(device, config.precision):
            outputs = net(x, s)
        loss = batch_loss(net, outputs, y, m, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
        count += len(x)
    return total / max(count, 1)


@torch.inference_mode()
def predict(net: nn.Module, data: DataLoader, device: torch.device,
            precision: str = "fp32") -> torch.Tensor:
    """Raw outputs (float32, on the CPU) for every row of ``data``, in order.

    ``net.probabilities(outputs)`` turns them into label scores.
    """
    net.eval()
    chunks = []
    for x, s, *_ in progress(data, desc="predict", unit="batch", leave=False, steps=10):
        with autocast(device, precision):
            outputs = net(x.to(device), s.to(device))
        chunks.append(outputs.float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def score(net: nn.Module, dataset: FeatureSet, config: TrainConfig, device: torch.device
          ) -> dict[str, float | np.ndarray]:
    """``loss``, ``f1`` (micro, at ``config.threshold``), ``map`` and ``probs`` of a subset."""
    outputs = predict(net, loader(dataset, max(config.batch_size, 256), shuffle=False, seed=0),
                      device, config.precision)
    y, m = dataset.targets, dataset.mask
    probs = net.probabilities(outputs.to(device)).cpu().numpy()
    with torch.no_grad():
        loss = float(batch_loss(net, outputs.to(device), y.to(device), m.to(device), config))
    y_np, m_np = y.numpy(), m.numpy().astype(bool)
    return {"loss": loss, "f1": metrics.micro_f1(y_np, probs >= config.threshold, m_np),
            "map": metrics.mean_average_precision(y_np, probs, m_np), "probs": probs}


def fingerprint(**parts: object) -> str:
    """A short hash identifying a training setup, so a checkpoint resumes only the same run."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit(net: nn.Module, train_set: FeatureSet, test_set: FeatureSet, config: TrainConfig, *,
        val_set: FeatureSet | None = None, checkpoint: str | os.PathLike | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``net`` for ``config.epochs``; return one history row per epoch.

    Each row holds ``epoch``, ``train_loss``, ``test_loss`` and ``test_f1`` (micro F1 at
    ``config.threshold``), with a validation set also ``val_loss``, ``val_f1`` and ``val_map``,
    and ``selected`` (1 on the epoch whose weights ``net`` ends with: the last, or with
    ``config.select == "best"`` the best ``val_map``). With ``checkpoint``, the model (and, for
    ``select="best"``, the best weights so far), optimizer, random state and history are
    saved after every epoch (before ``on_epoch`` is called), and a run started with an
    existing checkpoint continues from it, ending bit-identical to an uninterrupted run. A
    checkpoint that cannot be used is ignored with a warning and training starts over.
    Under torchrun each rank trains on its share of every batch (`fashiondvc.distributed`);
    only rank 0 saves the checkpoint and calls ``on_epoch``.
    """
    if config.select == "best" and val_set is None:
        raise FashionError("train.select: 'best' needs validation rows (split.val_size > 0)")
    device = distributed.setup(resolve_device(config.device), config.batch_size)
    torch.manual_seed(config.seed)
    net.to(device)
    optimizer = make_optimizer(net, config)
    history: list[dict] = []
    best: dict | None = None
    saved = distributed.read_on_main(checkpoint) if checkpoint else None
    if saved is not None:
        initial = copy.deepcopy(net.state_dict())
        try:
            history, best = resume(saved, net, optimizer, device, config.epochs)
            print(f"resuming from {checkpoint} after epoch {len(history)}")
        except Exception as exc:  # corrupt, or from another version of the code
            print(f"warning: cannot resume from {checkpoint} ({type(exc).__name__}: {exc}); "
                  "training from the start", file=sys.stderr)
            net.load_state_dict(initial)
            optimizer = make_optimizer(net, config)
            torch.manual_seed(config.seed)
            history, best = [], None
    model = distributed.wrap(net, device)
    for epoch in range(len(history) + 1, config.epochs + 1):
        if distributed.world_size() > 1:
            torch.manual_seed(distributed.epoch_seed(config.seed, epoch))
        train_loader = loader(train_set, config.batch_size, shuffle=True, seed=config.seed,
                              epoch=epoch)
        train_loss = distributed.average(train_one_epoch(
            model, train_loader, optimizer, config, device,
            desc=f"epoch {epoch}/{config.epochs}"))
        test = score(net, test_set, config, device)
        row = {"epoch": epoch, "train_loss": train_loss, "test_loss": test["loss"],
               "test_f1": test["f1"]}
        if val_set is not None:
            val = score(net, val_set, config, device)
            row.update(val_loss=val["loss"], val_f1=val["f1"], val_map=val["map"])
        history.append(row)
        if config.select == "best" and (best is None or _better(row, best["row"])):
            best = {"row": row, "state": copy.deepcopy(net.state_dict())}
        if not distributed.is_main():
            continue
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()))
        if checkpoint:
            save_checkpoint(checkpoint, net, optimizer, history, device, best)
        if on_epoch:
            on_epoch(row)
    if best is not None:
        net.load_state_dict(best["state"])
    selected = best["row"]["epoch"] if best is not None else len(history)
    for row in history:
        row["selected"] = int(row["epoch"] == selected)
    return history


def _better(row: dict, than: dict) -> bool:
    """Whether ``row`` has a higher validation mAP (NaN never wins)."""
    value, other = row.get("val_map", float("nan")), than.get("val_map", float("nan"))
    return bool(np.isfinite(value) and (not np.isfinite(other) or value > other))


def save_checkpoint(path: str | os.PathLike, net: nn.Module, optimizer: torch.optim.Optimizer,
                    history: list[dict], device: torch.device | None = None,
                    best: dict | None = None) -> None:
    """Save everything `fit` needs to resume, atomically (CPU and, on CUDA, GPU random state)."""
    state = {"net": net.state_dict(), "optimizer": optimizer.state_dict(),
             "history": json.dumps(history), "rng": torch.get_rng_state()}
    if best is not None:
        state["best_state"] = best["state"]
        state["best_row"] = json.dumps(best["row"])
    if device is not None and device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def resume(path: str | os.PathLike | io.BytesIO, net: nn.Module,
           optimizer: torch.optim.Optimizer, device: torch.device, epochs: int
           ) -> tuple[list[dict], dict | None]:
    """Restore ``net``, ``optimizer`` and the random state from a checkpoint (file or bytes).

    Returns its history and the best epoch so far (``{"row", "state"}`` or None). Loaded with
    ``weights_only=True`` onto the CPU (random states must stay there); raises if the
    checkpoint does not fit ``net`` or holds more than ``epochs`` epochs.
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
    best = None
    if "best_state" in state:
        best = {"row": json.loads(state["best_row"]), "state": state["best_state"]}
    return history, best


@dataclass
class Splits:
    """Stored features (and side features) with per-row targets, mask and subset rows."""

    features: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    side: np.ndarray | None = None

    def subset(self, rows: np.ndarray) -> FeatureSet:
        return FeatureSet(self.features, rows, self.targets, self.mask, side=self.side)


def load_splits(labels_csv: str | os.PathLike, split_csv: str | os.PathLike,
                features_dir: str | os.PathLike, names: list[str], *,
                side: bool = False) -> Splits:
    """Join the ingested labels, the split and the stored features, row by row.

    With ``side``, the side features (``side.npy``) come along for the ``multiscale`` head.
    """
    import pandas as pd

    from fashiondvc.labels import targets_for

    features_npy = Path(features_dir) / "features.npy"
    labels = pd.read_csv(labels_csv)
    split = pd.read_csv(split_csv).sort_values("index")
    features = load_features(features_npy)
    if len(features) != len(split):
        raise FashionError(f"{features_npy}: {len(features)} rows, but {split_csv} has "
                           f"{len(split)}; rerun the pipeline")
    targets, mask = targets_for(labels, split["image_id"].tolist(), names)
    subset = split["subset"].to_numpy()
    return Splits(features, targets, mask, np.flatnonzero(subset == "train"),
                  np.flatnonzero(subset == "test"), np.flatnonzero(subset == "val"),
                  load_features(Path(features_dir) / "side.npy") if side else None)


@dataclass
class Run:
    """A network ready to train, its `TrainConfig`, the config saved with it, and a run id."""

    net: nn.Module
    config: TrainConfig
    saved_config: dict
    id: str


def build_run(params: dict, data: Splits, names: list[str], inputs: list) -> Run:
    """Set up one training run from validated ``params`` and the loaded ``data``.

    Per-label positive weights and the label PCA are fitted on the training rows only. The
    run id hashes everything that shapes the history (settings, input files by content or
    identity, and this code), so a checkpoint resumes only an identical run.
    """
    from fashiondvc import net as net_module
    from fashiondvc.io import file_identity, sha256_file
    from fashiondvc.net import LabelPCA, build_net

    model, train = params["model"], params["train"]
    image_size = params["augment"]["image_size"]
    train_y, train_m = data.targets[data.train_rows], data.mask[data.train_rows]
    label_pca = (LabelPCA.fit(train_y, train_m, train["label_pca"])
                 if train["label_pca"] else None)
    net = build_net(model["weights"], model["frozen_convs"], image_size, model["hidden"],
                    len(names), model["dropout"], seed=train["seed"], head=model["head"],
                    side_width=0 if data.side is None else data.side.shape[1], label_pca=label_pca)
    weights = (losses.positive_weights("frequency", params["k"], train_y, train_m).tolist()
               if train["pos_weight"] == "frequency" else [])
    config = TrainConfig(
        k=params["k"], lr=params["lr"], epochs=train["epochs"], batch_size=train["batch_size"],
        optimizer=train["optimizer"], weight_decay=train["weight_decay"], loss=train["loss"],
        gamma=train["gamma"], pos_weight=weights, select=train["select"], seed=train["seed"],
        device=train["device"], precision=train["precision"],
        threshold=params["evaluate"]["threshold"])
    saved = {"labels": names, "image_size": image_size, "weights": model["weights"],
             "frozen_convs": model["frozen_convs"], "hidden": model["hidden"],
             "dropout": model["dropout"], "train": config.as_dict()}
    identities = [file_identity(p) if Path(p).is_file() else
                  sorted(file_identity(f) for f in Path(p).iterdir()) for p in inputs]
    run_id = fingerprint(params={k: v for k, v in params.items() if k != "search"},
                         inputs=identities,
                         code=[sha256_file(m.__file__) for m in (sys.modules[__name__],
                                                                 net_module, losses,
                                                                 distributed)])
    return Run(net, config, saved, run_id)
