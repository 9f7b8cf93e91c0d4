"""Speed benchmark: featurize vs. the compute bound, stored features vs. recomputing the trunk.

    .venv/bin/python bench/run.py --archive /path/to/ClothingAttributeDataset.zip

Measured side by side in one run (see bench/README.md):

1. frozen-trunk throughput: a bare PyTorch loop on random tensors vs. `featurize` on real
   JPEGs (images/s; it also computes the side and colour features beside the trunk's), plus
   the trunk in fp32, under bf16 autocast and with bf16 weights;
2. train + evaluate from stored features vs. the same epochs recomputing the frozen trunk for
   every batch, with ``frozen_convs`` 13 and 12, on a subset of the real photos;
3. and 4. (``dvc exp run -S k=5`` after ``dvc repro``; peak memory per stage at full scale) are
   read from ``bench/fullscale.json``, written by ``bench/fullscale.py``.

Prints a table and writes ``bench/results.md`` (and ``bench/results.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import machine as bench_machine  # noqa: E402
import report  # noqa: E402

from fashiondvc import backbones  # noqa: E402
from fashiondvc.augment import augment_folder  # noqa: E402
from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig  # noqa: E402
from fashiondvc.dataset import ingest, read_ingested  # noqa: E402
from fashiondvc.evaluate import evaluate  # noqa: E402
from fashiondvc.features import FeatureExtractor, featurize  # noqa: E402
from fashiondvc.labels import resolve_label_set  # noqa: E402
from fashiondvc.net import AttributeNet, build_net  # noqa: E402
from fashiondvc.params import SplitParams  # noqa: E402
from fashiondvc.preprocess import normalize  # noqa: E402
from fashiondvc.rows import Batch, Splits, load_splits  # noqa: E402
from fashiondvc.runtime import autocast  # noqa: E402
from fashiondvc.split import split_index  # noqa: E402
from fashiondvc.store import ImageStore  # noqa: E402
from fashiondvc.train import fit  # noqa: E402

IMAGE_SIZE = 224
LABELS = "attrs20"


def machine() -> dict:
    """`bench/machine.py`'s description, with the keys report.py reads."""
    described = bench_machine.describe()
    return {**described, "avx512_bf16": "avx512_bf16" in described["flags"],
            "amx": "amx_bf16" in described["flags"], "load_at_start": described["load"]}


def with_fractions(results: dict, roofline: dict) -> dict:
    """Item 1's images/s also as conv GFLOP/s and as a fraction of the GEMM roofline."""
    gflop = bench_machine.conv_gflop(1, 13, IMAGE_SIZE)
    bf16 = "bf16" if results["machine"]["native_bf16"] else "fp32"
    throughput = results["throughput"]
    figures = {"bare loop": max(throughput["bare"]), "featurize": max(throughput["featurize"]),
               **{f"trunk {k}": v for k, v in throughput["variants"].items()}}
    results["roofline_fractions"] = {
        name: {"images_s": round(ips, 2), "conv_gflops": round(ips * gflop, 1),
               "fraction": bench_machine.fraction(
                   ips * gflop, roofline, "fp32" if name == "trunk fp32" else bf16)}
        for name, ips in figures.items()}
    return results


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------- data


def build_subset(archive: Path, work: Path, photos: int) -> tuple[Path, Path, Path]:
    """Ingest the archive, augment its first ``photos`` photos (10 copies) and split them.

    Returns the ingested folder, the augmented store and ``split.csv``.
    """
    ingested, store_dir, split_csv = work / "ingested", work / "augmented", work / "split.csv"
    if not (ingested / "labels.csv").exists():
        ingest(archive, ingested)
    ids = read_ingested(ingested)["image_id"].to_numpy()[:photos]
    augment_folder(ingested / "images", ids, store_dir, copies=10, size=IMAGE_SIZE, seed=0)
    split_index(store_dir / "index.csv", split_csv, SplitParams(
        test_size=0.33, val_size=0.0, group_by_source=True, seed=0))  # the split stage
    return ingested, store_dir, split_csv


class Head:
    """The first ``n`` images of a store (picklable, for DataLoader workers)."""

    def __init__(self, store, n: int):
        self.store, self.n = store, min(n, len(store))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return self.store[i]


def extractor_config(frozen_convs: int, precision: str) -> ExtractorConfig:
    """The feature extractor measured: VGG-16's first ``frozen_convs`` convs, random weights."""
    return ExtractorConfig(backbone="vgg16", weights="random", frozen=frozen_convs,
                           image_size=IMAGE_SIZE, precision=precision)


def trunk(frozen_convs: int) -> nn.Sequential:
    """The frozen part, in fp32 on the CPU, not prepared."""
    return backbones.frozen_part(backbones.get("vgg16"), "random", frozen_convs)


# --------------------------------------------------------------------------- 1. throughput


@torch.inference_mode()
def bare_loop(frozen_convs: int, n: int, batch: int, precision: str) -> float:
    """Images/s of the trunk, prepared as `featurize` prepares it (the feature extractor's
    frozen part), on random tensors."""
    extractor = FeatureExtractor(extractor_config(frozen_convs, precision), device="cpu")
    model, dtype = extractor.part, extractor.dtype
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE).to(
        dtype=dtype, memory_format=torch.channels_last)
    model(x[:2])  # warm-up: oneDNN primitive creation
    start, done = time.perf_counter(), 0
    while done < n:
        model(x)
        done += batch
    return done / (time.perf_counter() - start)


@torch.inference_mode()
def trunk_variant(frozen_convs: int, n: int, batch: int, variant: str) -> float:
    """Images/s of the trunk in fp32, under bf16 autocast, or with weights cast to bf16."""
    device = torch.device("cpu")
    model = trunk(frozen_convs).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous(
        memory_format=torch.channels_last)
    context = autocast(device, "bf16") if variant == "bf16 autocast" else None
    if variant == "bf16 weights":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    with context or torch.autocast("cpu", enabled=False):
        model(x[:2])
        start, done = time.perf_counter(), 0
        while done < n:
            model(x)
            done += batch
    return done / (time.perf_counter() - start)


def featurize_speed(store, frozen_convs: int, out: Path, *, batch: int, workers: int,
                    precision: str) -> float:
    """Images/s of the featurize function (JPEG decode in workers, every feature kind, write
    to disk), the extractor built first."""
    extractor = FeatureExtractor(extractor_config(frozen_convs, precision), device="cpu")
    start = time.perf_counter()
    featurize(store, extractor, out, batch_size=batch, workers=workers)
    return len(store) / (time.perf_counter() - start)


def decode_speed(store) -> float:
    """Images/s of decoding the store's JPEGs in this process (what one worker does)."""
    start = time.perf_counter()
    for i in range(len(store)):
        store[i]
    return len(store) / (time.perf_counter() - start)


def throughput(store, work: Path, args: argparse.Namespace) -> dict:
    """Item 1: bare loop vs featurize, alternated ``args.repeats`` times; best of each."""
    sub = Head(store, args.images)
    bare, feat = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(13, len(sub), args.batch, args.precision))
        print(f"  bare loop: {bare[-1]:.2f} images/s (load {load()})", flush=True)
        feat.append(featurize_speed(sub, 13, work / "throughput", batch=args.batch,
                                    workers=args.workers, precision=args.precision))
        print(f"  featurize: {feat[-1]:.2f} images/s (load {load()})", flush=True)
    decode = decode_speed(sub)
    print(f"  JPEG decode: {decode:.0f} images/s on one core", flush=True)
    variants = {}
    for variant in ("fp32", "bf16 autocast", "bf16 weights"):
        variants[variant] = trunk_variant(13, args.variant_images, args.batch, variant)
        print(f"  trunk {variant}: {variants[variant]:.2f} images/s", flush=True)
    return {"images": len(sub), "bare": bare, "featurize": feat, "decode": decode,
            "ratio": max(feat) / max(bare), "variants": variants, "load": load()}


# --------------------------------------------------------------------------- 2. stored vs recompute


class RecomputeNet(nn.Module):
    """The frozen part run on every batch (no gradients, featurize precision), then ``net``.

    Takes the batches of `ImageSet` (``trunk`` holds the normalised images) where ``net``
    takes stored features; `fit`, `predict` and `evaluate` call it as they call ``net``.
    """

    def __init__(self, extractor: FeatureExtractor, net: AttributeNet):
        super().__init__()
        self.frozen, self.net, self.dtype = extractor.part, net, extractor.dtype
        self.label_pca = net.label_pca  # read by the loss

    def stored(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the featurize stage would have stored for these images, as float32."""
        with torch.no_grad():
            x = features["trunk"].to(dtype=self.dtype, memory_format=torch.channels_last)
            return {"trunk": self.frozen(x).float()}

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net.embed(self.stored(features))

    def out(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.net.out(embedded)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(self.stored(features))

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.net.probabilities(outputs)


class ImageSet(torch.utils.data.Dataset):
    """Like `fashiondvc.rows.FeatureSet`, but its batches hold normalised images decoded per
    batch (as ``trunk``) for `RecomputeNet`."""

    def __init__(self, store, rows: np.ndarray, targets: np.ndarray, mask: np.ndarray):
        self.store, self.rows = store, np.asarray(rows)
        self.targets = torch.from_numpy(targets[self.rows].astype(np.float32))
        self.mask = torch.from_numpy(mask[self.rows].astype(np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, items: list[int]) -> Batch:
        items = np.asarray(items)
        images = np.stack([self.store[int(self.rows[i])] for i in items])
        index = torch.from_numpy(items)
        return Batch({"trunk": normalize(torch.from_numpy(images))}, self.targets[index],
                     self.mask[index])


@dataclass
class ImageSplits(Splits):
    """`Splits` whose subsets recompute from the images of ``store``."""

    store: object = None

    def subset(self, rows: np.ndarray) -> ImageSet:
        return ImageSet(self.store, rows, self.targets, self.mask)


def train_and_evaluate(net: nn.Module, data: Splits, model_config: ModelConfig) -> float:
    """Seconds for `fit` (``model_config.train``) plus `evaluate`, as the train and evaluate
    stages do."""
    start = time.perf_counter()
    fit(net, data.subset(data.train_rows), data.subset(data.test_rows), model_config.train)
    evaluate(net, data, model_config, batch_size=64)
    return time.perf_counter() - start


def stored_vs_recompute(ingested: Path, store, split_csv: Path, work: Path, frozen_convs: int,
                        args: argparse.Namespace) -> dict:
    """Item 2 for one ``frozen_convs``: train + evaluate from stored features vs. recomputing."""
    names = resolve_label_set(LABELS)
    features = work / f"features-{frozen_convs}"
    featurize_ips = featurize_speed(store, frozen_convs, features, batch=args.batch,
                                    workers=args.workers, precision=args.precision)
    stored = load_splits(ingested / "labels.csv", split_csv, features, names)
    config = TrainConfig(k=3, lr=1e-7, epochs=args.epochs, batch_size=64, device="cpu")
    model_config = ModelConfig(labels=tuple(names), extractor=stored.stored.config,
                               input_shapes={"trunk": stored.stored.shapes["trunk"]},
                               train=config, head="flatten", hidden=256, dropout=0.5)

    stored_s = train_and_evaluate(build_net(model_config, seed=0), stored, model_config)
    print(f"  frozen_convs={frozen_convs}: stored {stored_s:.1f}s (load {load()})", flush=True)
    extractor = FeatureExtractor(stored.stored.config, device="cpu")  # the one that featurized
    recompute = RecomputeNet(extractor, build_net(model_config, seed=0))
    images = ImageSplits(stored.arrays, stored.targets, stored.mask, stored.train_rows,
                         stored.test_rows, store=store)
    recompute_s = train_and_evaluate(recompute, images, model_config)
    print(f"  frozen_convs={frozen_convs}: recompute {recompute_s:.1f}s (load {load()})",
          flush=True)
    shutil.rmtree(features, ignore_errors=True)
    return {"frozen_convs": frozen_convs, "images": len(store),
            "train": len(stored.train_rows), "test": len(stored.test_rows),
            "epochs": args.epochs, "featurize_ips": featurize_ips, "stored_s": stored_s,
            "recompute_s": recompute_s, "speedup": recompute_s / stored_s, "load": load()}


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fashiondvc-bench"))
    parser.add_argument("--photos", type=int, default=48,
                        help="photos of the archive augmented for items 1-2 (x11 images)")
    parser.add_argument("--images", type=int, default=256, help="images for item 1")
    parser.add_argument("--variant-images", type=int, default=96,
                        help="random images per trunk precision variant")
    parser.add_argument("--repeats", type=int, default=2, help="item 1 alternations")
    parser.add_argument("--epochs", type=int, default=1, help="epochs for item 2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--fullscale", type=Path, default=BENCH / "fullscale.json")
    parser.add_argument("--out", type=Path, default=BENCH / "results.md")
    parser.add_argument("--json", type=Path, default=BENCH / "results.json",
                        help="where the figures go (e.g. results-avx2.json for a second CPU kind)")
    parser.add_argument("--no-report", action="store_true",
                        help="write only --json, not results.md (a second machine's run)")
    parser.add_argument("--render-only", action="store_true",
                        help="only rewrite results.md from results.json and the other files")
    return parser.parse_args()


def write_report(results: dict, args: argparse.Namespace) -> None:
    """results.md from ``results`` and, when present, the full-scale run's files."""
    fullscale = json.loads(args.fullscale.read_text()) if args.fullscale.exists() else None
    metrics = BENCH / "fullscale_metrics.csv"
    table = pd.read_csv(metrics) if metrics.exists() else None
    text = report.render(results, fullscale, table)
    args.out.write_text(text)
    print(text)


def main() -> None:
    args = parse_args()
    if args.render_only:
        write_report(json.loads(args.json.read_text()), args)
        return
    if args.archive is None:
        raise SystemExit("--archive is required (except with --render-only)")
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "precision": args.precision,
                     "roofline": bench_machine.gemm_roofline(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"machine: {results['machine']}", flush=True)
    ingested, store_dir, split_csv = build_subset(args.archive.resolve(), args.work,
                                                  args.photos)
    store = ImageStore(store_dir)
    print("1. frozen-trunk throughput", flush=True)
    results["throughput"] = throughput(store, args.work, args)
    with_fractions(results, results["roofline"])
    print(f"  as fractions of the GEMM roofline: {results['roofline_fractions']}", flush=True)
    print("2. stored features vs recomputing the trunk", flush=True)
    results["stored_vs_recompute"] = [
        stored_vs_recompute(ingested, store, split_csv, args.work, fc, args) for fc in (13, 12)]
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_report:
        write_report(results, args)


if __name__ == "__main__":
    main()
