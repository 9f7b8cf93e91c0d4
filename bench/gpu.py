"""GPU check: featurize the full augmented set and train one table row with frozen_convs=12.

    .venv/bin/python bench/gpu.py --archive /path/to/ClothingAttributeDataset.zip

Runs the library functions the stages call (no DVC): ingest, augment (10 copies: 20416 images
at 224x224), split, featurize on CUDA, then `fit` for one row of the paper's table on CUDA.
Prints featurize images/s and seconds per epoch, and writes them to ``--out`` (JSON). Not run
in the session that wrote it: no GPU was lent to it (see bench/results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from fashiondvc.augment import augment_folder  # noqa: E402
from fashiondvc.dataset import ingest, read_ingested  # noqa: E402
from fashiondvc.features import featurize  # noqa: E402
from fashiondvc.labels import resolve_label_set  # noqa: E402
from fashiondvc.net import build_net  # noqa: E402
from fashiondvc.paper import paper_table  # noqa: E402
from fashiondvc.split import split_test_mask  # noqa: E402
from fashiondvc.store import ImageStore  # noqa: E402
from fashiondvc.train import FeatureSet, TrainConfig, fit, load_splits  # noqa: E402
from fashiondvc.trunk import feature_shape, load_vgg16, split_vgg  # noqa: E402


def prepare_data(archive: Path, work: Path, photos: int | None) -> tuple[Path, Path, Path]:
    """Ingest, augment (all CPUs) and split; reuse what an earlier call left in ``work``."""
    ingested, store, split_csv = work / "ingested", work / "augmented", work / "split.csv"
    if not (ingested / "labels.csv").exists():
        ingest(archive, ingested)
    ids = read_ingested(ingested)["image_id"].to_numpy()[:photos]
    if not (store / "index.csv").exists():
        start = time.perf_counter()
        augment_folder(ingested / "images", ids, store, copies=10, size=224, seed=0)
        print(f"augment: {time.perf_counter() - start:.1f}s", flush=True)
    index = ImageStore(store).index
    is_test = split_test_mask(index["image_id"].to_numpy(), 0.33, seed=0)
    index[["index", "image_id", "copy"]].assign(
        subset=np.where(is_test, "test", "train")).to_csv(split_csv, index=False)
    return ingested, store, split_csv


def run_featurize(store_dir: Path, out: Path, args: argparse.Namespace) -> float:
    """Featurize every image on ``args.device``; return images/s."""
    store = ImageStore(store_dir)
    frozen, _ = split_vgg(load_vgg16(args.weights), args.frozen_convs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    featurize(store, frozen, out, feature_shape=feature_shape(args.frozen_convs, 224),
              batch_size=args.batch, workers=args.workers, precision=args.precision,
              device=args.device)
    ips = len(store) / (time.perf_counter() - start)
    print(f"featurize: {len(store)} images, frozen_convs={args.frozen_convs}, "
          f"{args.precision}: {ips:.1f} images/s", flush=True)
    return ips


def run_train(ingested: Path, split_csv: Path, features: Path,
              args: argparse.Namespace) -> list[float]:
    """Train one table row on ``args.device``; return seconds per epoch."""
    row = paper_table().set_index("row").loc[args.row]
    names = resolve_label_set(row["labels"])
    data = load_splits(ingested / "labels.csv", split_csv, features, names)
    in_memory = True if args.in_memory else None
    train = FeatureSet(data.features, data.train_rows, data.targets, data.mask,
                       in_memory=in_memory)
    test = FeatureSet(data.features, data.test_rows, data.targets, data.mask,
                      in_memory=in_memory)
    net = build_net(args.weights, args.frozen_convs, 224, 256, len(names), 0.5, seed=0)
    config = TrainConfig(k=float(row["k"]), lr=float(row["lr"]), epochs=args.epochs,
                         batch_size=64, device=args.device, precision=args.precision)
    marks = [time.perf_counter()]

    def on_epoch(_: dict) -> None:
        marks.append(time.perf_counter())

    fit(net, train, test, config, on_epoch=on_epoch)
    seconds = list(np.diff(marks))
    print(f"train {args.row}: " + ", ".join(f"{s:.1f}s" for s in seconds) + " per epoch",
          flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", required=True, type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fashiondvc-gpu"))
    parser.add_argument("--photos", type=int, default=None, help="first N photos (default all)")
    parser.add_argument("--frozen-convs", type=int, default=12)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--row", default="g8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--in-memory", action="store_true",
                        help="hold all feature rows in RAM (4 GB for frozen_convs=12)")
    parser.add_argument("--out", type=Path, default=BENCH / "gpu_results.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"device: {device}", flush=True)
    ingested, store, split_csv = prepare_data(args.archive.resolve(), args.work, args.photos)
    features = args.work / f"features-{args.frozen_convs}"
    features.mkdir(parents=True, exist_ok=True)
    ips = run_featurize(store, features, args)
    epochs = run_train(ingested, split_csv, features, args)
    args.out.write_text(json.dumps({
        "device": device, "frozen_convs": args.frozen_convs, "precision": args.precision,
        "featurize_images_per_s": ips, "row": args.row, "seconds_per_epoch": epochs,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
