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

Run ``python bench/search_latency.py``; it prints the figures and appends them to
``bench/search_results.md``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fashiondvc.index import Featurizer, SearchIndex
from fashiondvc.labels import LABEL_SETS
from fashiondvc.net import build_net
from fashiondvc.retrieval import l2_normalize
from fashiondvc.runtime import cpu_supports_bf16
from fashiondvc.sample import draw_photo
from fashiondvc.search import Searcher, rank
from fashiondvc.trunk import load_vgg16, split_vgg

RESULTS = Path(__file__).with_name("search_results.md")


def synthetic_index(n: int, hidden: int, labels: list[str], seed: int = 0) -> SearchIndex:
    """An index of ``n`` rows with random unit embeddings and random probabilities."""
    rng = np.random.default_rng(seed)
    return SearchIndex(
        root=Path("collection"), paths=[f"{i:06d}.jpg" for i in range(n)],
        hashes=[f"{i:064x}" for i in range(n)], labels=labels,
        probs=rng.random((n, len(labels)), dtype=np.float32),
        embeddings=l2_normalize(rng.normal(size=(n, hidden))), threshold=0.5)


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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=20412)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-write", action="store_true", help="do not append to the results")
    args = parser.parse_args()
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

    net = build_net("random", 12, args.image_size, args.hidden, len(labels), 0.5, seed=0)
    frozen, _ = split_vgg(load_vgg16("random"), 12)
    config = {"labels": labels, "image_size": args.image_size, "weights": "random",
              "frozen_convs": 12, "hidden": args.hidden, "dropout": 0.5}
    photos = []
    for i in range(8):
        buffer = io.BytesIO()
        draw_photo(["red", "white"], np.random.default_rng(i)).resize((266, 400)).save(
            buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    end_ms = {}
    for precision in ("fp32", "bf16"):
        searcher = Searcher(index, Featurizer(net, config, frozen, precision=precision))
        end_ms[precision] = median_ms(
            lambda i, s=searcher: s.query(photos[i % len(photos)], "q.jpg", top=10), args.queries)

    bf16_note = "" if cpu_supports_bf16() else " (no native bf16: runs fp32)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} - {args.photos} photos, {args.queries} queries",
        "",
        f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, numpy {np.__version__}; load average {load:.1f} "
        "at the end (the CPUs may be shared)",
        "",
        "| measure | median ms | p90 ms |",
        "|---|---:|---:|",
        f"| ranking only (cosine, top 10) | {rank_ms[0]:.2f} | {rank_ms[1]:.2f} |",
        f"| ranking with a two-attribute filter | {where_ms[0]:.2f} | {where_ms[1]:.2f} |",
        *(f"| end to end, trunk in {p}{bf16_note if p == 'bf16' else ''}: JPEG -> "
          f"{args.image_size} px -> VGG-16 trunk + net -> top 10 | {ms[0]:.1f} | {ms[1]:.1f} |"
          for p, ms in end_ms.items()),
        f"| loading the index from disk (once per process) | {load_ms:.1f} | |",
        "",
    ]
    print("\n".join(lines))
    if not args.no_write:
        with RESULTS.open("a") as out:
            if out.tell() == 0:
                out.write("# Search latency (bench/search_latency.py)\n\n")
            out.write("\n".join(lines) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
