"""A toy training run for tests/test_distributed.py: one process, or every rank of torchrun.

``python tests/distkit.py OUT DEVICES DROPOUT [PAUSE]`` trains `toy_net` on `toy_sets` with
`config` and a checkpoint in OUT; with DEVICES > 1 it first re-executes itself under torchrun
through `fashiondvc.distributed.launch`, as the train stage does. Rank 0 writes OUT/result.pt
(history and weights); every call of fit's ``on_epoch`` appends "RANK EPOCH" to
OUT/on_epoch.log. PAUSE (seconds) after each epoch's checkpoint leaves a test the time to kill
the run in the middle.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from fashiondvc import distributed
from fashiondvc.config import TrainConfig
from fashiondvc.net import AttributeNet
from fashiondvc.rows import FeatureSet
from fashiondvc.train import fit

N_TRAIN = 64  # a multiple of the global batch: no padded rows, every batch splits evenly


def toy_sets() -> tuple[FeatureSet, FeatureSet]:
    """Train rows 0-63 and test rows 64-95 of generated (96, 8, 2, 2) features, 3 labels."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(N_TRAIN + 32, 8, 2, 2)).astype(np.float32)
    targets = (features[:, :3, 0, 0] > 0).astype(np.float32)
    mask = rng.random(targets.shape) > 0.1
    arrays = {"trunk": features}
    return (FeatureSet(arrays, np.arange(N_TRAIN), targets, mask),
            FeatureSet(arrays, np.arange(N_TRAIN, N_TRAIN + 32), targets, mask))


def toy_net(dropout: float) -> AttributeNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AttributeNet(torch.nn.Sequential(), {"trunk": (8, 2, 2)}, hidden=16,
                            n_labels=3, dropout=dropout)


def config(epochs: int = 4) -> TrainConfig:
    # SGD, not Adam: Adam's update hardly changes when every gradient is doubled, so it
    # would hide gradients summed instead of averaged over the ranks
    return TrainConfig(k=2, lr=0.05, epochs=epochs, batch_size=16, optimizer="sgd",
                       device="cpu")


def launch_settings(devices: int) -> SimpleNamespace:
    """The ``train`` parameters `distributed.launch` reads (`fashiondvc.params.TrainParams`)."""
    return SimpleNamespace(devices=devices, device="cpu", batch_size=config().batch_size)


def train(out: Path, dropout: float, pause: float = 0.0) -> tuple[list[dict], dict]:
    """Train with a checkpoint in ``out``; return the history and the final weights."""

    def on_epoch(row: dict) -> None:
        with open(out / "on_epoch.log", "a") as log:
            log.write(f"{distributed.rank()} {row['epoch']}\n")
        time.sleep(pause)

    net = toy_net(dropout)
    history = fit(net, *toy_sets(), config(), checkpoint=out / "train.pt", on_epoch=on_epoch)
    return history, net.state_dict()


def main() -> None:
    out, devices, dropout = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    distributed.launch(launch_settings(devices))
    history, state = train(out, dropout, pause)
    if distributed.is_main():
        torch.save({"history": history, "state": state,
                    "world_size": distributed.world_size()}, out / "result.pt")


if __name__ == "__main__":
    main()
