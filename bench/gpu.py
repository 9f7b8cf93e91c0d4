"""GPU check: the pipeline's heavy steps at full scale on one device, one JSON (issue 14 item 5).

    python3 bench/gpu.py [--archive ClothingAttributeDataset.zip] [--device auto]

Runs the library functions the stages call (no DVC), each phase timed in wall seconds:

1. ``machine``: `machine.describe` and the GEMM roofline measured on ``--device`` (CUDA:
   ``--gemm-n`` 8192, synchronised), in the same run.
2. ``archive``, ``ingest``, ``augment``, ``split``: the first ``--photos`` photos (default all
   1856 of the real archive), 10 augmented copies each at ``--size`` px (20416 images), split
   2:1 grouped by photo. Without ``--archive`` a generated archive in the real layout is used
   (`fashiondvc.sample`: smaller photos, so ingest and augment are faster than on the real
   one; every later phase sees the same image count and size).
3. ``featurize_fc12``: the ``frozen_convs: 12`` trunk over every image (images/s).
4. ``train_fc12``: `fit` of one paper row (``--row``, default g8) for ``--epochs`` epochs on the
   stored features (seconds per epoch), as the train stage runs it.
5. ``fc8``: one ``frozen_convs: 8`` epoch. Its features are 512x28x28 (800 KB per image in
   fp16, 16 GB for 20416 images), too big for a small disk, so only the images of the first
   ``--fc8-photos`` photos (default 512: 5632 images, 4.5 GB) are featurized and trained on,
   split 2:1 by photo among themselves; ``epoch_s_all_images`` scales the measured epoch to
   every image (an estimate: time per image is flat once the GPU is busy).
6. ``index``, ``search``: the index of the ingested photos from the stored features
   (`build_index_from_features`), then one-off queries in this process: load index and
   network (`Searcher.open`), featurize one photo, rank; median ms over ``--queries``
   photos after one warm-up. Queries run on the CPU whatever ``--device``: `Featurizer` is
   CPU-only.

``--weights random`` (the default: a GPU machine cannot download ImageNet weights) is the
seeded random VGG-16 written to a state_dict file first and used as ``model.weights: <file>``,
so the query loads its frozen trunk from a file as a real setup does; timings do not depend
on the weights' values.

Progress goes to stderr; stdout gets one JSON at the end, also written to ``--out`` (updated
after every phase, so a run killed at its time limit keeps what it measured). Needs torch,
torchvision, numpy, pandas, scikit-learn, scipy, pillow and tqdm (no DVC, MLflow or YAML
libraries), and ``--work`` space for the features: 4.1 + 4.5 GB at the defaults.

    .venv/bin/python bench/gpu.py --device cpu --photos 2 --epochs 1 --size 64 \\
        --weights random --workers 0    # end-to-end check on a CPU (tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import machine  # noqa: E402

from fashiondvc.augment import augment_folder  # noqa: E402
from fashiondvc.choices import PRECISIONS  # noqa: E402
from fashiondvc.dataset import ingest, read_ingested  # noqa: E402
from fashiondvc.errors import FashionError, run_main  # noqa: E402
from fashiondvc.features import featurize, storage_dtype  # noqa: E402
from fashiondvc.index import build_index_from_features  # noqa: E402
from fashiondvc.labels import resolve_label_set  # noqa: E402
from fashiondvc.net import build_net, save_net  # noqa: E402
from fashiondvc.paper import paper_table  # noqa: E402
from fashiondvc.runtime import resolve_device  # noqa: E402
from fashiondvc.sample import make_sample_archive  # noqa: E402
from fashiondvc.search import Searcher  # noqa: E402
from fashiondvc.split import split_test_mask  # noqa: E402
from fashiondvc.store import ImageStore  # noqa: E402
from fashiondvc.train import FeatureSet, TrainConfig, fit, load_splits  # noqa: E402
from fashiondvc.trunk import feature_shape, load_vgg16, split_vgg  # noqa: E402

COPIES, HIDDEN, DROPOUT, TEST_SIZE = 10, 256, 0.5, 0.33
#: Folders and files this script owns inside ``--work`` (removed at the start of a run).
OWNED = ("sample.zip", "ingested", "augmented", "split.csv", "split-fc8.csv", "features-12",
         "features-8", "net.pt", "index", "vgg16-random.pth")


def log(message: str) -> None:
    """Progress line on stderr (stdout carries only the final JSON)."""
    print(message, file=sys.stderr, flush=True)


class Report:
    """The JSON being built: phase wall seconds under ``seconds``, written after each phase."""

    def __init__(self, out: Path, device: torch.device):
        self.out, self.device = out, device
        self.data: dict = {"complete": False, "device": device.type, "seconds": {}}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block (wall seconds, CUDA synchronised) as ``seconds[name]``, then save."""
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.data["seconds"][name] = round(time.perf_counter() - start, 2)
        log(f"{name}: {self.data['seconds'][name]:.1f}s")
        self.save()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.data, indent=2) + "\n")


def prepare_data(args: argparse.Namespace, report: Report) -> tuple[Path, Path, Path]:
    """Archive (given or generated), ingest, augment (all CPUs), split; return their paths."""
    work = args.work
    with report.phase("archive"):
        archive = args.archive
        if archive is None:
            archive = make_sample_archive(work / "sample.zip", n_images=args.photos or 1856)
    ingested, store_dir, split_csv = work / "ingested", work / "augmented", work / "split.csv"
    with report.phase("ingest"):
        ingest(archive, ingested)
    ids = read_ingested(ingested)["image_id"].to_numpy()
    if args.photos is not None and args.photos > len(ids):
        raise FashionError(f"--photos: {args.photos} asked, the archive has {len(ids)}")
    ids = ids[:args.photos]
    with report.phase("augment"):
        augment_folder(ingested / "images", ids, store_dir, copies=COPIES, size=args.size,
                       seed=0)
    with report.phase("split"):
        index = ImageStore(store_dir).index
        is_test = split_test_mask(index["image_id"].to_numpy(), TEST_SIZE, seed=0)
        index[["index", "image_id", "copy"]].assign(
            subset=np.where(is_test, "test", "train")).to_csv(split_csv, index=False)
    report.data["data"] = {"archive": str(args.archive) if args.archive else "generated",
                           "photos": len(ids), "images": len(index), "copies": COPIES,
                           "size": args.size}
    return ingested, store_dir, split_csv


def run_featurize(store, out: Path, frozen_convs: int, args: argparse.Namespace) -> dict:
    """Featurize every image of ``store`` (an `ImageStore` or a subset) into ``out``."""
    frozen, _ = split_vgg(load_vgg16(args.weights), frozen_convs)
    shape = feature_shape(frozen_convs, args.size)
    out.mkdir(parents=True)
    start = time.perf_counter()
    featurize(store, frozen, out, feature_shape=shape, batch_size=args.batch,
              workers=args.workers, precision=args.precision, device=args.device)
    seconds = time.perf_counter() - start
    row_bytes = int(np.prod(shape)) * storage_dtype(args.precision).itemsize
    log(f"featurize: {len(store)} images, frozen_convs={frozen_convs}, {args.precision}: "
        f"{len(store) / seconds:.1f} images/s")
    return {"frozen_convs": frozen_convs, "images": len(store), "shape": list(shape),
            "images_per_s": round(len(store) / seconds, 1),
            "bytes_per_image": row_bytes, "gib": round(row_bytes * len(store) / 2**30, 2)}


def train_row(ingested: Path, split_csv: Path, features: Path, frozen_convs: int, epochs: int,
              args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """`fit` the paper row ``args.row`` on stored features; the net and seconds per epoch."""
    row = paper_table().set_index("row").loc[args.row]
    names = resolve_label_set(row["labels"])
    data = load_splits(ingested / "labels.csv", split_csv, features, names)
    in_memory = True if args.in_memory else None
    train = FeatureSet(data.features, data.train_rows, data.targets, data.mask,
                       in_memory=in_memory)
    test = FeatureSet(data.features, data.test_rows, data.targets, data.mask,
                      in_memory=in_memory)
    net = build_net(args.weights, frozen_convs, args.size, HIDDEN, len(names), DROPOUT, seed=0)
    config = TrainConfig(k=float(row["k"]), lr=float(row["lr"]), epochs=epochs, batch_size=64,
                         device=args.device, precision=args.train_precision)
    marks = [time.perf_counter()]

    def on_epoch(_: dict) -> None:
        if args.device_type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    fit(net, train, test, config, on_epoch=on_epoch)
    seconds = [round(float(s), 2) for s in np.diff(marks)]
    log(f"train {args.row}, frozen_convs={frozen_convs}: "
        + ", ".join(f"{s:.1f}s" for s in seconds) + " per epoch")
    return net, {"row": args.row, "labels": row["labels"], "frozen_convs": frozen_convs,
                 "precision": args.train_precision, "train_rows": len(train),
                 "test_rows": len(test), "in_memory": train.cache is not None,
                 "seconds_per_epoch": seconds}


def fc8_epoch(ingested: Path, store_dir: Path, split_csv: Path, args: argparse.Namespace,
              report: Report) -> None:
    """One ``frozen_convs: 8`` epoch on the images of the first ``--fc8-photos`` photos."""
    import pandas as pd

    store = ImageStore(store_dir)
    photos = store.index["image_id"].drop_duplicates().to_numpy()[:args.fc8_photos]
    rows = np.flatnonzero(store.index["image_id"].isin(photos).to_numpy())
    split = pd.read_csv(split_csv).sort_values("index").iloc[rows]
    is_test = split_test_mask(split["image_id"].to_numpy(), TEST_SIZE, seed=0)  # >= 1 each
    sub_split = args.work / "split-fc8.csv"
    split.assign(index=np.arange(len(rows)), subset=np.where(is_test, "test", "train")).to_csv(
        sub_split, index=False)
    features = args.work / "features-8"
    with report.phase("featurize_fc8"):
        stored = run_featurize(torch.utils.data.Subset(store, rows), features, 8, args)
    with report.phase("train_fc8"):
        _, trained = train_row(ingested, sub_split, features, 8, 1, args)
    epoch_s = trained["seconds_per_epoch"][0]
    full_gib = stored["bytes_per_image"] * len(store) / 2**30
    report.data["fc8"] = {
        **{k: stored[k] for k in ("shape", "bytes_per_image", "gib")},
        "photos": len(photos), "images": len(rows),
        "featurize_images_per_s": stored["images_per_s"],
        **{k: trained[k] for k in ("row", "precision", "train_rows", "test_rows", "in_memory")},
        "epoch_s": epoch_s,
        "epoch_s_all_images": round(epoch_s * len(store) / len(rows), 2),
        "note": (f"one epoch on the {len(rows)} images of the first {len(photos)} photos "
                 f"(features of all {len(store)} would take {full_gib:.1f} GiB); "
                 "epoch_s_all_images scales epoch_s by the image count (an estimate)"),
    }


def search_latency(ingested: Path, split_csv: Path, net: torch.nn.Module, names: list[str],
                   args: argparse.Namespace, report: Report) -> None:
    """Index the ingested photos from the stored fc12 features, then time one-off queries."""
    model, index_dir = args.work / "net.pt", args.work / "index"
    save_net(net.cpu(), model, {"labels": names, "image_size": args.size, "weights": args.weights,
                                "frozen_convs": 12, "hidden": HIDDEN, "dropout": DROPOUT})
    with report.phase("index"):
        index = build_index_from_features(model, ingested, split_csv, args.work / "features-12",
                                          index_dir, precision=args.precision)
    times, top = [], []
    with report.phase("search"):
        for i in range(args.queries + 1):  # query 0 is the warm-up
            photo = index.file(i % len(index))
            start = time.perf_counter()
            searcher = Searcher.open(index_dir, model)
            opened = time.perf_counter()
            result = searcher.query(photo.read_bytes(), photo.name, top=10)
            done = time.perf_counter()
            times.append(((done - start) * 1000, (done - opened) * 1000))
            top.append(result["results"][0]["path"] if result["results"] else None)
    one_off, query = [t[0] for t in times[1:]], [t[1] for t in times[1:]]
    report.data["search"] = {
        "device": "cpu", "index_photos": len(index), "queries": args.queries,
        "one_off_ms_median": round(statistics.median(one_off), 1),
        "one_off_ms": [round(t, 1) for t in one_off], "first_one_off_ms": round(times[0][0], 1),
        "query_ms_median": round(statistics.median(query), 1), "top_results": top[1:],
        "note": ("one-off: Searcher.open (index, network, frozen trunk) + query (decode, "
                 "trunk, network, rank) in this process, after one warm-up; query: the "
                 "query alone; on the CPU (Featurizer is CPU-only)"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=None,
                        help="the dataset zip or folder (default: a generated one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fashiondvc-gpu"))
    parser.add_argument("--photos", type=int, default=None,
                        help="first N photos (default all; generated: 1856)")
    parser.add_argument("--fc8-photos", type=int, default=512,
                        help="photos whose images the frozen_convs=8 epoch uses (default 512)")
    parser.add_argument("--size", type=int, default=224, help="image side, px (default 224)")
    parser.add_argument("--weights", default="random",
                        help="random (seeded, saved to a file first) | imagenet | a VGG-16 "
                             "state_dict file (default random)")
    parser.add_argument("--precision", default="bf16", choices=PRECISIONS,
                        help="featurize precision (default bf16, as params.yaml)")
    parser.add_argument("--train-precision", default="bf16", choices=PRECISIONS,
                        help="train precision (default bf16, as params.yaml)")
    parser.add_argument("--batch", type=int, default=128, help="featurize batch size")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers decoding JPEGs (default min(8, CPUs))")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--row", default="g8", help="paper row for the trained rows (g8)")
    parser.add_argument("--epochs", type=int, default=3, help="frozen_convs=12 epochs (3)")
    parser.add_argument("--queries", type=int, default=5, help="timed search queries (5)")
    parser.add_argument("--gemm-n", type=int, default=0,
                        help="roofline matrix size (default 8192 on CUDA, 2048 on a CPU)")
    parser.add_argument("--gemm-seconds", type=float, default=1.0,
                        help="seconds per roofline dtype (default 1)")
    parser.add_argument("--in-memory", action="store_true",
                        help="hold all feature rows in RAM (4 GB for frozen_convs=12)")
    parser.add_argument("--out", type=Path, default=BENCH / "gpu_results.json")
    args = parser.parse_args()
    for name in ("photos", "fc8_photos"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')}: at least 2 (one train, one test photo)")
    for name in ("epochs", "queries", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: at least 1")
    rows = paper_table()["row"].tolist()
    if args.row not in rows:
        parser.error(f"--row: {args.row!r} is not a paper row ({', '.join(rows)})")
    if args.archive is not None and not args.archive.exists():
        parser.error(f"--archive: {args.archive} does not exist")
    run_main(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    """Every phase; progress (the library's prints too) on stderr, the JSON on stdout."""
    device = resolve_device(args.device, "--device")
    args.device, args.device_type = str(device), device.type
    args.archive = args.archive.resolve() if args.archive else None
    args.work = args.work.resolve()
    if args.weights not in ("random", "imagenet"):
        args.weights = str(Path(args.weights).resolve())
    args.work.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = args.work / name
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
    report = Report(args.out, device)
    report.data["weights"] = args.weights
    if args.weights == "random":  # a file, as model.weights: <file>: the query's fast path
        state = load_vgg16("random").features.state_dict()
        args.weights = str(args.work / "vgg16-random.pth")
        torch.save({f"features.{k}": v for k, v in state.items()}, args.weights)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        with report.phase("machine"):
            n = args.gemm_n or (8192 if device.type == "cuda" else 2048)
            report.data["machine"] = machine.describe()
            report.data["roofline"] = {**machine.gemm_roofline(n, args.gemm_seconds,
                                                               device.type),
                                       "device": device.type}
            if device.type == "cuda":
                props = torch.cuda.get_device_properties(device)
                report.data["gpu"] = {
                    "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                    "tf32_cudnn": torch.backends.cudnn.allow_tf32}
        log(machine.markdown(report.data["machine"], report.data["roofline"]))
        ingested, store_dir, split_csv = prepare_data(args, report)
        with report.phase("featurize_fc12"):
            report.data["featurize_fc12"] = run_featurize(
                ImageStore(store_dir), args.work / "features-12", 12, args)
        with report.phase("train_fc12"):
            net, report.data["train_fc12"] = train_row(
                ingested, split_csv, args.work / "features-12", 12, args.epochs, args)
        names = resolve_label_set(report.data["train_fc12"]["labels"])
        fc8_epoch(ingested, store_dir, split_csv, args, report)
        search_latency(ingested, split_csv, net, names, args, report)
    report.data["seconds"]["total"] = round(time.perf_counter() - start, 2)
    report.data["peak_rss_gib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if device.type == "cuda":
        report.data["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report.data["complete"] = True
    report.save()
    print(json.dumps(report.data, indent=2), flush=True)


if __name__ == "__main__":
    main()
