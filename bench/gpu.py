"""GPU check: the pipeline's heavy steps at full scale on one device, one JSON (issue 14 item 5).

    python3 bench/gpu.py [--archive ClothingAttributeDataset.zip] [--device auto]

Runs the in-process pipeline (`fashiondvc.pipeline.Pipeline` under ``--work``/pipeline, laid
out as the repository, no DVC) with this checkout's params.yaml and the settings below, each
phase timed in wall seconds:

1. ``machine``: `machine.describe` and the GEMM roofline measured on ``--device`` (CUDA:
   ``--gemm-n`` 8192, synchronised), in the same run.
2. ``archive``, ``ingest``, ``augment``, ``split``: the first ``--photos`` photos (default all
   1856 of the real archive), 10 augmented copies each at ``--size`` px (20416 images), split
   2:1 grouped by photo. Without ``--archive`` a generated archive in the real layout is used
   (`fashiondvc.sample`: smaller photos, so ingest and augment are faster than on the real
   one; every later phase sees the same image count and size).
3. ``featurize_fc12``: the feature extractor (``frozen_convs: 12``) over every image
   (images/s, the extractor built first).
4. ``train_fc12``: `fit` of one paper row (``--row``, default g8) for ``--epochs`` epochs on the
   stored features (seconds per epoch), set up as the train stage sets it up (`build_run`).
5. ``fc8``: one ``frozen_convs: 8`` epoch. Its features are 512x28x28 (800 KB per image in
   fp16, 16 GB for 20416 images), too big for a small disk, so only the images of the first
   ``--fc8-photos`` photos (default 512: 5632 images, 4.5 GB) are featurized and trained on,
   split 2:1 by photo among themselves; ``epoch_s_all_images`` scales the measured epoch to
   every image (an estimate: time per image is flat once the GPU is busy).
6. ``index``, ``search``: the index stage (the ingested photos, from the stored features),
   then one-off queries in this process: load index and network (`Searcher.open`), featurize
   one photo, rank; median ms over ``--queries`` photos after one warm-up. Queries run on
   the CPU whatever ``--device``: the `Predictor`'s feature extractor runs there.

``--weights random`` (the default: a GPU machine cannot download ImageNet weights) is the
seeded random VGG-16 written to a state_dict file first and used as ``model.weights: <file>``,
so the query loads its frozen part from a file as a real setup does; timings do not depend
on the weights' values.

Progress goes to stderr; stdout gets one JSON at the end, also written to ``--out`` (updated
after every phase, so a run killed at its time limit keeps what it measured). Needs torch,
torchvision, numpy, pandas, scikit-learn, scipy, pillow, tqdm and ruamel.yaml (which reads
params.yaml; no DVC or MLflow), and ``--work`` space for the features: 4.1 + 4.5 GB at the
defaults.

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

import benchkit  # noqa: E402
import machine  # noqa: E402

from fashiondvc.augment import augment_folder  # noqa: E402
from fashiondvc.choices import PRECISIONS  # noqa: E402
from fashiondvc.config import ExtractorConfig  # noqa: E402
from fashiondvc.dataset import read_ingested  # noqa: E402
from fashiondvc.errors import FashionError, run_main  # noqa: E402
from fashiondvc.features import FeatureExtractor, featurize  # noqa: E402
from fashiondvc.net import save_net  # noqa: E402
from fashiondvc.paper import paper_table  # noqa: E402
from fashiondvc.params import Params  # noqa: E402
from fashiondvc.pipeline import Pipeline  # noqa: E402
from fashiondvc.rows import FeatureSet, load_splits  # noqa: E402
from fashiondvc.runtime import resolve_device  # noqa: E402
from fashiondvc.sample import make_sample_archive  # noqa: E402
from fashiondvc.search import Searcher  # noqa: E402
from fashiondvc.split import split_index  # noqa: E402
from fashiondvc.store import ImageStore  # noqa: E402
from fashiondvc.train import Run, build_run, fit  # noqa: E402

COPIES, HIDDEN, DROPOUT, TEST_SIZE = 10, 256, 0.5, 0.33
#: Folders and files this script owns inside ``--work`` (removed at the start of a run): the
#: pipeline's folder (laid out as the repository: data/, models/, ...), the frozen_convs=8
#: subset, the generated archive and the random weights file.
OWNED = ("sample.zip", "pipeline", "fc8", "vgg16-random.pth")


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


def bench_params(args: argparse.Namespace, archive: Path, frozen_convs: int, epochs: int
                 ) -> Params:
    """The pipeline's parameters for this run: the paper row ``args.row``, the command line's
    sizes, devices and precisions, and the settings the figures depend on pinned."""
    row = paper_table().set_index("row").loc[args.row]
    return benchkit.params({
        "labels": row["labels"], "k": float(row["k"]), "lr": float(row["lr"]),
        "data.archive": str(archive), "data.sha256": None, "data.on_corrupt": "fail",
        "augment.copies": COPIES, "augment.image_size": args.size, "augment.seed": 0,
        "augment.workers": 0,  # all CPUs
        "split.test_size": TEST_SIZE, "split.val_size": 0.0, "split.group_by_source": True,
        "split.seed": 0,
        "model.backbone": "vgg16", "model.weights": args.weights,
        "model.frozen_convs": frozen_convs, "model.head": "flatten", "model.inputs": ["trunk"],
        "model.hidden": HIDDEN, "model.dropout": DROPOUT,
        "featurize.precision": args.precision, "featurize.batch_size": args.batch,
        "featurize.workers": args.workers, "featurize.device": args.device,
        "train.epochs": epochs, "train.batch_size": 64, "train.optimizer": "adam",
        "train.weight_decay": 0.0, "train.loss": "wbce", "train.pos_weight": "k",
        "train.label_pca": 0, "train.select": "last", "train.seed": 0,
        "train.device": args.device, "train.devices": 1, "train.precision": args.train_precision,
        "evaluate.threshold": 0.5, "evaluate.thresholds": "fixed", "search.images": None})


def prepare_data(args: argparse.Namespace, report: Report) -> Pipeline:
    """Archive (given or generated), ingest, augment (all CPUs), split; return the pipeline."""
    work = args.work
    with report.phase("archive"):
        archive = args.archive
        if archive is None:
            archive = make_sample_archive(work / "sample.zip", n_images=args.photos or 1856)
    pipeline = Pipeline(bench_params(args, archive, 12, args.epochs), work / "pipeline")
    with report.phase("ingest"):
        pipeline.ingest()
    ids = read_ingested(pipeline.ingested)["image_id"].to_numpy()
    if args.photos is not None and args.photos > len(ids):
        raise FashionError(f"--photos: {args.photos} asked, the archive has {len(ids)}")
    ids = ids[:args.photos]
    options = pipeline.params.augment
    with report.phase("augment"):  # the augment stage's work, on the first --photos photos
        augment_folder(pipeline.ingested / "images", ids, pipeline.augmented,
                       copies=options.copies, size=options.image_size, seed=options.seed,
                       workers=options.workers)
    with report.phase("split"):
        pipeline.split()
    report.data["data"] = {"archive": str(args.archive) if args.archive else "generated",
                           "photos": len(ids), "images": len(ImageStore(pipeline.augmented)),
                           "copies": COPIES, "size": args.size}
    return pipeline


def run_featurize(params: Params, store, out: Path) -> dict:
    """The featurize stage's work on ``store`` (the augmented store or a subset of it) into
    ``out``: the extractor of ``params`` (built first, outside the images/s figure)."""
    options = params.featurize
    extractor = FeatureExtractor(ExtractorConfig.from_params(params), device=options.device)
    start = time.perf_counter()
    meta = featurize(store, extractor, out, batch_size=options.batch_size,
                     workers=options.workers)
    seconds = time.perf_counter() - start
    trunk = meta["features"]["trunk"]
    row_bytes = int(np.prod(trunk["shape"])) * np.dtype(trunk["dtype"]).itemsize
    log(f"featurize: {len(store)} images, frozen_convs={params.model.frozen_convs}, "
        f"{options.precision}: {len(store) / seconds:.1f} images/s")
    return {"frozen_convs": params.model.frozen_convs, "images": len(store),
            "shape": list(trunk["shape"]), "images_per_s": round(len(store) / seconds, 1),
            "bytes_per_image": row_bytes, "gib": round(row_bytes * len(store) / 2**30, 2)}


def train_row(params: Params, labels_csv: Path, split_csv: Path, features: Path,
              args: argparse.Namespace) -> tuple[Run, dict]:
    """`fit` the paper row of ``params`` on stored features, set up as the train stage sets it
    up (`build_run`); the run and its seconds per epoch."""
    data = load_splits(labels_csv, split_csv, features, params.labels, params.model.inputs)
    run = build_run(params, data, inputs=[labels_csv, split_csv, features])
    in_memory = True if args.in_memory else None
    train = FeatureSet(data.arrays, data.train_rows, data.targets, data.mask,
                       in_memory=in_memory)
    test = FeatureSet(data.arrays, data.test_rows, data.targets, data.mask,
                      in_memory=in_memory)
    marks = [time.perf_counter()]

    def on_epoch(_: dict) -> None:
        if args.device_type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    fit(run.net, train, test, run.config, on_epoch=on_epoch)
    seconds = [round(float(s), 2) for s in np.diff(marks)]
    frozen_convs = params.model.frozen_convs
    log(f"train {args.row}, frozen_convs={frozen_convs}: "
        + ", ".join(f"{s:.1f}s" for s in seconds) + " per epoch")
    return run, {"row": args.row, "labels": params.raw["labels"], "frozen_convs": frozen_convs,
                 "precision": run.config.precision, "train_rows": len(train),
                 "test_rows": len(test), "in_memory": "trunk" in train.cache,
                 "seconds_per_epoch": seconds}


def fc8_epoch(pipeline: Pipeline, args: argparse.Namespace, report: Report) -> None:
    """One ``frozen_convs: 8`` epoch on the images of the first ``--fc8-photos`` photos."""
    store = ImageStore(pipeline.augmented)
    photos = store.index["image_id"].drop_duplicates().to_numpy()[:args.fc8_photos]
    rows = np.flatnonzero(store.index["image_id"].isin(photos).to_numpy())
    params = bench_params(args, Path(pipeline.params.data.archive), 8, 1)
    folder = args.work / "fc8"
    folder.mkdir()
    # the split stage on the subset's own index, rows renumbered: >= 1 test photo
    store.index.iloc[rows][["image_id", "copy"]].assign(index=np.arange(len(rows))).to_csv(
        folder / "index.csv", index=False)
    split_index(folder / "index.csv", folder / "split.csv", params.split)
    with report.phase("featurize_fc8"):
        stored = run_featurize(params, torch.utils.data.Subset(store, rows),
                               folder / "features")
    with report.phase("train_fc8"):
        _, trained = train_row(params, pipeline.labels_csv, folder / "split.csv",
                               folder / "features", args)
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


def search_latency(pipeline: Pipeline, run: Run, report: Report,
                   args: argparse.Namespace) -> None:
    """Index the ingested photos from the stored fc12 features (the index stage), then time
    one-off queries."""
    save_net(run.net.cpu(), pipeline.model, run.model_config)
    with report.phase("index"):
        index, _ = pipeline.index()
    times, top = [], []
    with report.phase("search"):
        for i in range(args.queries + 1):  # query 0 is the warm-up
            photo = index.file(i % len(index))
            start = time.perf_counter()
            searcher = Searcher.open(pipeline.index_dir, pipeline.model)
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
        "note": ("one-off: Searcher.open (index, network, frozen part of the backbone) + query "
                 "(decode, feature extractor, network, rank) in this process, after one "
                 "warm-up; query: the query alone; on the CPU (the Predictor's feature "
                 "extractor runs there)"),
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
        args.weights = str(benchkit.random_weights_file(args.work / "vgg16-random.pth"))
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
        pipeline = prepare_data(args, report)
        with report.phase("featurize_fc12"):
            report.data["featurize_fc12"] = run_featurize(
                pipeline.params, ImageStore(pipeline.augmented), pipeline.features)
        with report.phase("train_fc12"):
            trained, report.data["train_fc12"] = train_row(
                pipeline.params, pipeline.labels_csv, pipeline.split_csv, pipeline.features,
                args)
        fc8_epoch(pipeline, args, report)
        search_latency(pipeline, trained, report, args)
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
