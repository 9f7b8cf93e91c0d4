"""Query latency of the search engine against a 20412-photo index (the paper's augmented set size).

Two figures, each the median over ``--queries`` queries after a warm-up:

ranking
    cosine similarity of a query embedding against every indexed photo, top 10, with and
    without a two-attribute ``where`` filter (random embeddings and probabilities: ranking cost
    does not depend on their values);
end to end
    `Searcher.query` on a JPEG photo: decode, resize to 224 px, the frozen VGG-16 trunk
    (``frozen_convs=12``, random weights; in fp32, and in bf16 as ``featurize.precision: bf16``
    runs it) and the network, then the ranking and the answer.

one-off query (``--cli-runs``, item 4 of issue 14)
    wall and CPU seconds of a whole ``fashiondvc search`` process (interpreter start, imports,
    network and index loading, the query, exit), beside its floor (``python -c pass`` and
    ``python -c "import torch"``) and, with ``--baseline REV``, the same command at an older git
    revision; and the web page's ``POST /api/query`` (Flask test client, server already up).
    It uses ``--index``/``--model`` when they exist (the ``index`` stage's output), else builds
    a small index in a temporary folder from the first ``--cli-photos`` photos of ``--archive``
    (generated photos without it) and ``--weights`` (seeded random weights without it).

Run ``python bench/search_latency.py``; it prints the figures and appends them to
``bench/search_results.md``.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig
from fashiondvc.features import FeatureExtractor
from fashiondvc.index import SearchIndex
from fashiondvc.labels import LABEL_SETS
from fashiondvc.net import build_net
from fashiondvc.predictor import Predictor
from fashiondvc.retrieval import l2_normalize
from fashiondvc.runtime import cpu_supports_bf16
from fashiondvc.sample import draw_photo
from fashiondvc.search import Searcher, rank

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import benchkit  # noqa: E402
import machine  # noqa: E402

RESULTS = BENCH / "search_results.md"
REPO = BENCH.parent


def synthetic_index(n: int, hidden: int, labels: list[str], seed: int = 0) -> SearchIndex:
    """An index of ``n`` rows with random unit embeddings and random probabilities."""
    rng = np.random.default_rng(seed)
    return SearchIndex(
        root=Path("collection"), paths=[f"{i:06d}.jpg" for i in range(n)],
        hashes=[f"{i:064x}" for i in range(n)], labels=labels,
        probs=rng.random((n, len(labels)), dtype=np.float32),
        embeddings=l2_normalize(rng.normal(size=(n, hidden))), threshold=0.5)


def model_config(weights: str, image_size: int, hidden: int, precision: str) -> ModelConfig:
    """The paper's network for attrs20 on VGG-16 with ``weights``, ``frozen_convs`` 12; queries
    run the frozen part in ``precision`` (``featurize.precision``)."""
    extractor = ExtractorConfig(backbone="vgg16", weights=weights, frozen=12,
                                image_size=image_size, precision=precision)
    return ModelConfig(labels=LABEL_SETS["attrs20"], extractor=extractor,
                       input_shapes={"trunk": FeatureExtractor(extractor).shapes()["trunk"]},
                       train=TrainConfig(k=3, lr=1e-7, epochs=10, batch_size=64),
                       head="flatten", hidden=hidden, dropout=0.5)


def median_ms(action, queries: int, warmup: int = 3) -> tuple[float, float]:
    """Median and 90th percentile wall time of ``action(i)`` in milliseconds."""
    for i in range(warmup):
        action(i)
    times = []
    for i in range(queries):
        start = time.perf_counter()
        action(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(np.percentile(times, 90))


def query_fixture(work: Path, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """``(index folder, model, query photo)``: the real ones when present, else a small index.

    The small index: the first ``args.cli_photos`` photos of the archive (generated photos
    without one), a ``frozen_convs`` 12 network on ``args.weights`` (a seeded random VGG-16
    saved to a file without them), indexed by `build_index` as the index stage would.
    """
    from fashiondvc.index import build_index
    from fashiondvc.net import save_net
    from fashiondvc.sample import make_sample_archive

    if (args.index / "meta.json").exists() and args.model.exists():
        photo = next(p for p in sorted(SearchIndex.load(args.index).root.iterdir())
                     if p.suffix == ".jpg")
        return args.index, args.model, photo
    photos = work / "photos"
    photos.mkdir()
    if args.archive.exists():
        with zipfile.ZipFile(args.archive) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
            for name in names[:args.cli_photos]:
                (photos / Path(name).name).write_bytes(archive.read(name))
    else:
        sample = make_sample_archive(work / "sample", n_images=args.cli_photos, folder=True)
        photos = sample / "images"
    weights = args.weights
    if not weights.exists():
        weights = benchkit.random_weights_file(work / "vgg16.pth")
    precision = "bf16" if cpu_supports_bf16() else "fp32"
    config = model_config(str(weights.resolve()), 224, 256, precision)
    save_net(build_net(config, seed=0), work / "net.pt", config)
    build_index(work / "net.pt", photos, work / "index")
    return work / "index", work / "net.pt", sorted(photos.glob("*.jpg"))[0]


def process_seconds(command: list[str], runs: int, env: dict | None = None,
                    cwd: Path | None = None) -> dict:
    """Median wall and CPU (user + system) seconds of running ``command`` ``runs`` times."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"wall_s": round(statistics.median(walls), 2),
            "cpu_s": round(statistics.median(cpus), 2), "runs": runs}


def one_off_query(args: argparse.Namespace) -> dict:
    """The one-off query figures (see the module docstring), all measured in this run."""
    from fashiondvc.web import create_app

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        index_dir, model, photo = query_fixture(work, args)
        search = ["search", str(photo), "--index", str(index_dir), "--model", str(model)]
        fashiondvc = [str(Path(sys.executable).with_name("fashiondvc")), *search]
        out = {"photos": len(SearchIndex.load(index_dir)), "index": str(index_dir)}
        out["python"] = process_seconds([sys.executable, "-c", "pass"], args.cli_runs)
        out["import torch"] = process_seconds([sys.executable, "-c", "import torch"],
                                              args.cli_runs)
        out["fashiondvc search"] = process_seconds(fashiondvc, args.cli_runs, cwd=work)
        if args.baseline:
            old = work / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline,
                                      "fashiondvc"], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            env = {**os.environ, "PYTHONPATH": str(old)}
            out[f"fashiondvc search at {args.baseline}"] = process_seconds(
                [sys.executable, "-m", "fashiondvc.cli", *search], args.cli_runs, env=env,
                cwd=work)
        start = time.perf_counter()
        app = create_app(Searcher.open(index_dir, model)).test_client()
        out["web start-up (Searcher.open + app)"] = {"wall_s": round(
            time.perf_counter() - start, 2)}
        data = photo.read_bytes()

        def post(_: int) -> None:
            response = app.post("/api/query", data={"photo": (io.BytesIO(data), photo.name)})
            assert response.status_code == 200, response.get_json()

        out["web POST /api/query"] = dict(zip(("median_ms", "p90_ms"),
                                              (round(v, 1) for v in median_ms(
                                                  post, args.web_queries)), strict=True))
    return out


def ranking_lines(args: argparse.Namespace, roofline: dict | None) -> list[str]:
    """The in-process figures: ranking, end to end per precision, loading the index."""
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = list(LABEL_SETS["attrs20"])
    index = synthetic_index(args.photos, args.hidden, labels)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(args.queries + 3, args.hidden)).astype(np.float32)

    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        start = time.perf_counter()
        SearchIndex.load(folder)
        load_ms = (time.perf_counter() - start) * 1000

    rank_ms = median_ms(lambda i: rank(index, queries[i], top=10), args.queries)
    where_ms = median_ms(lambda i: rank(index, queries[i], top=10,
                                        where=["black", "pattern_solid"]), args.queries)

    config = model_config("random", args.image_size, args.hidden, "fp32")
    net = build_net(config, seed=0)
    photos = []
    for i in range(8):
        buffer = io.BytesIO()
        draw_photo(["red", "white"], np.random.default_rng(i)).resize((266, 400)).save(
            buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    end_ms = {}
    for precision in ("fp32", "bf16"):
        extractor = replace(config.extractor, precision=precision)
        searcher = Searcher(index, Predictor(net, replace(config, extractor=extractor)))
        end_ms[precision] = median_ms(
            lambda i, s=searcher: s.query(photos[i % len(photos)], "q.jpg", top=10), args.queries)

    gflop = machine.conv_gflop(1, 13, args.image_size)  # trunk 1-12 + conv5_3
    bf16_note = "" if cpu_supports_bf16() else " (no native bf16: runs fp32)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    fractions = {p: "" if roofline is None else
                 f" ({gflop / ms[0] * 1e3:.0f} GFLOP/s of convs = "
                 f"{machine.fraction(gflop / ms[0] * 1e3, roofline, p)} of the {p} GEMM)"
                 for p, ms in end_ms.items()}
    return [
        f"In-process, {args.photos} photos, {args.queries} queries, torch "
        f"{torch.get_num_threads()} threads, numpy {np.__version__}; load average {load:.1f} "
        "at the end (the CPUs may be shared)",
        "",
        "| measure | median ms | p90 ms |",
        "|---|---:|---:|",
        f"| ranking only (cosine, top 10) | {rank_ms[0]:.2f} | {rank_ms[1]:.2f} |",
        f"| ranking with a two-attribute filter | {where_ms[0]:.2f} | {where_ms[1]:.2f} |",
        *(f"| end to end, trunk in {p}{bf16_note if p == 'bf16' else ''}: JPEG -> "
          f"{args.image_size} px -> VGG-16 trunk + net -> top 10{fractions[p]} | {ms[0]:.1f} | "
          f"{ms[1]:.1f} |"
          for p, ms in end_ms.items()),
        f"| loading the index from disk (once per process) | {load_ms:.1f} | |",
        "",
    ]


def cli_lines(cli: dict) -> list[str]:
    """The one-off query table."""
    lines = [f"One-off query against an index of {cli['photos']} photos ({cli['index']}), "
             f"median of {cli['python']['runs']} runs:", "",
             "| command | wall s | CPU s (user + sys) |", "|---|---:|---:|"]
    for name, value in cli.items():
        if isinstance(value, dict) and "cpu_s" in value:
            lines.append(f"| `{name}` | {value['wall_s']:.2f} | {value['cpu_s']:.2f} |")
    lines += [f"| web start-up: `Searcher.open` + app (once per server) | "
              f"{cli['web start-up (Searcher.open + app)']['wall_s']:.2f} | |",
              f"| web `POST /api/query` (server up; median / p90 ms) | "
              f"{cli['web POST /api/query']['median_ms']:.0f} / "
              f"{cli['web POST /api/query']['p90_ms']:.0f} ms | |", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=20412)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-write", action="store_true", help="do not append to the results")
    parser.add_argument("--cli-runs", type=int, default=3, help="runs per command (0: skip)")
    parser.add_argument("--web-queries", type=int, default=10)
    parser.add_argument("--index", type=Path, default=REPO / "data/index")
    parser.add_argument("--model", type=Path, default=REPO / "models/net.pt")
    parser.add_argument("--archive", type=Path,
                        default=REPO.parent / "shared/data/ClothingAttributeDataset.zip")
    parser.add_argument("--weights", type=Path,
                        default=REPO.parent / "shared/weights/vgg16_imagenet_features.pth")
    parser.add_argument("--cli-photos", type=int, default=40)
    parser.add_argument("--gemm-n", type=int, default=2048, help="GEMM roofline size (0: skip)")
    parser.add_argument("--baseline", default="", metavar="REV",
                        help="also time `fashiondvc search` at this git revision")
    parser.add_argument("--skip-ranking", action="store_true",
                        help="only the one-off query section")
    args = parser.parse_args()
    described = machine.describe()
    roofline = machine.gemm_roofline(args.gemm_n) if args.gemm_n else None
    print(machine.markdown(described, roofline), flush=True)
    cli = one_off_query(args) if args.cli_runs else None
    if cli:
        print(cli, flush=True)
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} - search latency", "",
             machine.markdown(described, roofline), ""]
    if cli:
        lines += cli_lines(cli)
    if not args.skip_ranking:
        lines += ranking_lines(args, roofline)
    print("\n".join(lines))
    if not args.no_write:
        with RESULTS.open("a") as out:
            if out.tell() == 0:
                out.write("# Search latency (bench/search_latency.py)\n\n")
            out.write("\n".join(lines) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
