"""Training of the backbone's trainable rest and the head on stored features.

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
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fashiondvc import distributed, losses, metrics
from fashiondvc.config import ModelConfig, TrainConfig
from fashiondvc.errors import FashionError
from fashiondvc.io import atomic_path
from fashiondvc.net import LabelPCA, build_net, save_net
from fashiondvc.params import Params
from fashiondvc.progress import progress
from fashiondvc.rows import FeatureSet, Splits, load_splits, loader, predict
from fashiondvc.runtime import autocast, resolve_device


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


def train_one_epoch(net: nn.Module, data: DataLoader, optimizer: torch.optim.Optimizer,
                    config: TrainConfig, device: torch.device, desc: str, epoch: int = 0
                    ) -> float:
    """One pass over the training batches; returns the mean loss per image.

    Raises
    ------
    FashionError
        As soon as a batch's loss is not finite (training diverged: too high a learning rate),
        naming ``epoch``, the batch (from 1) and the learning rate, before the step.
    """
    net.train()
    total, count = 0.0, 0
    for number, batch in enumerate(progress(data, desc=desc, unit="batch", leave=False,
                                            steps=10), start=1):
        batch = batch.to(device)
        with autocast(device, config.precision):
            outputs = net(batch.features)
        loss = losses.batch_loss(net, outputs, batch.targets, batch.mask, config)
        value = loss.item()
        if not math.isfinite(value):
            raise FashionError(diverged(value, epoch, number, config))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * len(batch)
        count += len(batch)
    return total / max(count, 1)


def diverged(value: float, epoch: int, batch: int | str, config: TrainConfig) -> str:
    """The one-line message of a training loss that became ``value`` (NaN or infinite)."""
    return (f"training diverged: the loss became {value} at epoch {epoch}, batch {batch}; "
            f"lower lr (now {config.lr:g})")


def score(net: nn.Module, dataset: FeatureSet, config: TrainConfig, device: torch.device,
          epoch: int = 0) -> dict[str, float | np.ndarray]:
    """``loss``, ``map`` (threshold-free) and ``probs`` of a subset.

    Raises `FashionError` (`diverged`) if the network's outputs are not finite after
    ``epoch``: the last step of the epoch diverged.
    """
    outputs = predict(net, dataset, device, config.precision,
                      batch_size=max(config.batch_size, 256))
    if not bool(torch.isfinite(outputs).all()):
        bad = outputs[~torch.isfinite(outputs)][0].item()
        raise FashionError(diverged(bad, epoch, "last", config).replace(
            "the loss became", "the outputs became"))
    y, m = dataset.targets, dataset.mask
    probs = net.probabilities(outputs.to(device)).cpu().numpy()
    with torch.no_grad():
        loss = float(losses.batch_loss(net, outputs.to(device), y.to(device), m.to(device), config))
    y_np, m_np = y.numpy(), m.numpy().astype(bool)
    return {"loss": loss, "map": metrics.mean_average_precision(y_np, probs, m_np),
            "probs": probs}


def fingerprint(**parts: object) -> str:
    """A short hash identifying a training setup, so a checkpoint resumes only the same run."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit(net: nn.Module, train_set: FeatureSet, test_set: FeatureSet, config: TrainConfig, *,
        val_set: FeatureSet | None = None, checkpoint: str | os.PathLike | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``net`` for ``config.epochs``; return one history row per epoch.

    Each row holds ``epoch``, ``train_loss``, ``test_loss`` and ``test_map`` (threshold-free,
    so no post-processing knob is a training input), with a validation set also ``val_loss``
    and ``val_map``,
    and ``selected`` (1 on the epoch whose weights ``net`` ends with: the last, or with
    ``config.select == "best"`` the best ``val_map``). With ``checkpoint``, the model (and, for
    ``select="best"``, the best weights so far), optimizer, random state and history are
    saved after every epoch (before ``on_epoch`` is called), and a run started with an
    existing checkpoint continues from it, ending bit-identical to an uninterrupted run. A
    checkpoint that cannot be used is ignored with a warning and training starts over.
    Under torchrun each rank trains on its share of every batch (`fashiondvc.distributed`);
    only rank 0 saves the checkpoint and calls ``on_epoch``.
    """
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
            desc=f"epoch {epoch}/{config.epochs}", epoch=epoch))
        test = score(net, test_set, config, device, epoch)
        row = {"epoch": epoch, "train_loss": train_loss, "test_loss": test["loss"],
               "test_map": test["map"]}
        if val_set is not None:
            val = score(net, val_set, config, device, epoch)
            row.update(val_loss=val["loss"], val_map=val["map"])
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
class Run:
    """A network ready to train, its `TrainConfig`, the config saved with it, and a run id."""

    net: nn.Module
    config: TrainConfig
    model_config: ModelConfig
    id: str


def build_run(params: Params, data: Splits, inputs: list) -> Run:
    """Set up one training run from validated ``params`` and the loaded ``data``.

    The features' shapes and the extractor that made them come from the features' metadata.
    Per-label positive weights and the label PCA are fitted on the training rows only. The
    run id hashes everything that shapes the history (settings, input files by content or
    identity, and this code), so a checkpoint resumes only an identical run.
    """
    from fashiondvc import net as net_module
    from fashiondvc import rows as rows_module
    from fashiondvc.io import file_identity, sha256_file

    model, train = params.model, params.train
    train_y, train_m = data.targets[data.train_rows], data.mask[data.train_rows]
    label_pca = (LabelPCA.fit(train_y, train_m, train.label_pca) if train.label_pca else None)
    weights = (tuple(losses.positive_weights("frequency", params.k, train_y, train_m).tolist())
               if train.pos_weight == "frequency" else ())
    config = TrainConfig(
        k=params.k, lr=params.lr, epochs=train.epochs, batch_size=train.batch_size,
        optimizer=train.optimizer, weight_decay=train.weight_decay, loss=train.loss,
        gamma=train.gamma, pos_weight=weights, select=train.select, seed=train.seed,
        device=train.device, precision=train.precision)
    model_config = ModelConfig(
        labels=params.labels, extractor=data.stored.config,
        input_shapes={name: data.stored.shapes[name] for name in model.inputs},
        head=model.head, hidden=model.hidden, dropout=model.dropout,
        label_pca=train.label_pca, train=config)
    net = build_net(model_config, seed=train.seed, label_pca=label_pca)
    identities = [file_identity(p) if Path(p).is_file() else
                  sorted(file_identity(f) for f in Path(p).iterdir()) for p in inputs]
    run_id = fingerprint(config=model_config.to_dict(), inputs=identities,
                         code=[sha256_file(m.__file__) for m in (sys.modules[__name__],
                                                                 net_module, rows_module,
                                                                 losses, distributed)])
    return Run(net, config, model_config, run_id)


def train(params: Params, labels_csv: str | os.PathLike, split_csv: str | os.PathLike,
          features_dir: str | os.PathLike, model_path: str | os.PathLike,
          history_csv: str | os.PathLike, *, checkpoint_dir: str | os.PathLike = ".checkpoints",
          on_epoch: Callable[[dict], None] | None = None) -> list[dict] | None:
    """The train stage: fit the network on the stored features, save it to ``model_path`` and
    its history (one row per epoch, `fit`) to ``history_csv``.

    Reads the features named by ``model.inputs``; checkpoints every epoch into
    ``checkpoint_dir`` (a killed run resumes; the checkpoint is removed once the model is
    saved). Returns the history (`fit`) on the main process, None on the other ranks.
    """
    data = load_splits(labels_csv, split_csv, features_dir, params.labels, params.model.inputs)
    run = build_run(params, data, inputs=[labels_csv, split_csv, features_dir])
    checkpoint = Path(checkpoint_dir) / f"train-{run.id}.pt"
    history = fit(run.net, data.subset(data.train_rows), data.subset(data.test_rows),
                  run.config, val_set=data.subset(data.val_rows) if len(data.val_rows) else None,
                  checkpoint=checkpoint, on_epoch=on_epoch)
    if not distributed.is_main():
        return None
    import pandas as pd

    from fashiondvc.io import write_csv

    save_net(run.net, model_path, run.model_config, int8_trunk=data.stored.int8_files())
    write_csv(history_csv, pd.DataFrame(history))
    checkpoint.unlink(missing_ok=True)
    return history
