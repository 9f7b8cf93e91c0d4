"""Seconds per training epoch at full scale, on stored features of the real shape.

    .venv/bin/python bench/epoch.py --frozen-convs 12 [--epochs 1] [--precision fp32]

Writes a float16 ``.npy`` of 20412 rows of the trunk's output shape for ``--frozen-convs``
(random values: the time of a training step does not depend on them; 4.1 GB for 12), splits it
2:1 like the pipeline, and times `fit` through the same `FeatureSet` data path as the train
stage (rows in memory when they fit 1.5 GiB, else memory-mapped). Prints seconds per epoch,
the peak resident memory and the load average, and writes ``bench/epoch-<fc>-<precision>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from fashiondvc.features import NpyWriter, load_features  # noqa: E402
from fashiondvc.net import build_net  # noqa: E402
from fashiondvc.train import FeatureSet, TrainConfig, fit  # noqa: E402
from fashiondvc.trunk import feature_shape  # noqa: E402

N_IMAGES, N_LABELS = 20412, 20


def write_features(path: Path, frozen_convs: int, chunk: int = 256) -> None:
    """Random float16 rows of the trunk's output shape, streamed to ``path``."""
    shape = (N_IMAGES, *feature_shape(frozen_convs, 224))
    rng = np.random.default_rng(0)
    writer = NpyWriter(path, np.float16, shape)
    for start in range(0, N_IMAGES, chunk):
        rows = min(chunk, N_IMAGES - start)
        writer.append(rng.random((rows, *shape[1:]), dtype=np.float32).astype(np.float16))
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frozen-convs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fashiondvc-epoch"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"features-{args.frozen_convs}.npy"
    if not path.exists():
        write_features(path, args.frozen_convs)
    features = load_features(path)
    rng = np.random.default_rng(0)
    targets = (rng.random((N_IMAGES, N_LABELS)) < 0.3).astype(np.float32)
    mask = np.ones_like(targets)
    is_test = np.repeat(rng.random(N_IMAGES // 11 + 1) < 0.33, 11)[:N_IMAGES]
    train = FeatureSet(features, np.flatnonzero(~is_test), targets, mask)
    test = FeatureSet(features, np.flatnonzero(is_test), targets, mask)
    net = build_net("random", args.frozen_convs, 224, 256, N_LABELS, 0.5, seed=0)
    config = TrainConfig(k=3, lr=1e-7, epochs=args.epochs, batch_size=64, device="cpu",
                         precision=args.precision)
    marks, loads = [time.perf_counter()], []

    def on_epoch(_: dict) -> None:
        marks.append(time.perf_counter())
        loads.append(os.getloadavg()[0])

    fit(net, train, test, config, on_epoch=on_epoch)
    result = {
        "frozen_convs": args.frozen_convs, "precision": args.precision,
        "threads": torch.get_num_threads(), "train_rows": len(train), "test_rows": len(test),
        "in_memory": train.cache is not None, "seconds_per_epoch": list(np.diff(marks)),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "load": loads,
    }
    out = BENCH / f"epoch-{args.frozen_convs}-{args.precision}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
