"""Seconds per training epoch at full scale, on stored features of the real shape.

    .venv/bin/python bench/epoch.py --frozen-convs 12 [--epochs 1] [--precision fp32 bf16]

Writes a float16 ``.npy`` of 20412 rows of the trunk's output shape for ``--frozen-convs``
(random values: the time of a training step does not depend on them; 4.1 GB for 12), splits it
2:1 like the pipeline, and times `fit` through the same `FeatureSet` data path as the train
stage (rows in memory when they fit 1.5 GiB, else read per batch), once per ``--precision``
in one process (side by side). Prints seconds per epoch, the peak resident memory and the load
average, and writes ``bench/epoch-<fc>-<precisions>.json``.

    .venv/bin/python bench/epoch.py --variants [--rows 256]

Issue 14 item 2, side by side in one run on ``--rows`` random rows in memory: a training step
(forward, backward, fused Adam) and an evaluation forward of the ``--frozen-convs`` network in
fp32, fp32 channels_last, bf16 autocast and bf16 channels_last; images/s, achieved GFLOP/s of
the convs (forward + weight gradient; no input gradient) and their fraction of this machine's
GEMM roofline (`machine.py`, same run); and whether autograd computes the gradient of the
trainable convs' input (it must not: the stored features are constants). Writes
``bench/epoch-variants-<fc>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import machine  # noqa: E402

from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig  # noqa: E402
from fashiondvc.features import FeatureExtractor, NpyWriter  # noqa: E402
from fashiondvc.labels import LABEL_SETS  # noqa: E402
from fashiondvc.net import AttributeNet, build_net  # noqa: E402
from fashiondvc.rows import FeatureSet  # noqa: E402
from fashiondvc.train import fit  # noqa: E402

N_IMAGES, LABELS = 20412, LABEL_SETS["attrs20"]
N_LABELS = len(LABELS)


def extractor_config(frozen_convs: int) -> ExtractorConfig:
    """The frozen part the features stand for: VGG-16 (random weights), 224 px."""
    return ExtractorConfig(backbone="vgg16", weights="random", frozen=frozen_convs,
                           image_size=224, precision="bf16")


@functools.cache
def trunk_shape(frozen_convs: int) -> tuple[int, ...]:
    """Shape of one image's ``trunk`` feature for ``frozen_convs`` at 224 px."""
    return FeatureExtractor(extractor_config(frozen_convs)).shapes()["trunk"]


def fresh_net(frozen_convs: int, config: TrainConfig) -> AttributeNet:
    """The paper's network (flatten head, 256 hidden, dropout 0.5) on ``frozen_convs``
    stored features, seed 0, as the train stage builds it."""
    return build_net(ModelConfig(labels=LABELS, extractor=extractor_config(frozen_convs),
                                 input_shapes={"trunk": trunk_shape(frozen_convs)},
                                 train=config, head="flatten", hidden=256, dropout=0.5),
                     seed=0)


def write_features(path: Path, frozen_convs: int, chunk: int = 256) -> None:
    """Random float16 rows of the trunk's output shape, streamed to ``path``."""
    shape = (N_IMAGES, *trunk_shape(frozen_convs))
    rng = np.random.default_rng(0)
    writer = NpyWriter(path, np.float16, shape)
    for start in range(0, N_IMAGES, chunk):
        rows = min(chunk, N_IMAGES - start)
        writer.append(rng.random((rows, *shape[1:]), dtype=np.float32).astype(np.float16))
    writer.close()


def input_gradient_computed(net: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether backward would compute d loss / d input of the first trainable conv."""
    out = net.convs[0](x)
    return out.grad_fn is not None and out.grad_fn.next_functions[0][0] is not None


def variants(args: argparse.Namespace) -> dict:
    """Train-step and evaluation speed per precision / memory format (see the docstring)."""
    from fashiondvc.runtime import autocast
    from fashiondvc.train import make_optimizer

    described = machine.describe()
    roofline = machine.gemm_roofline(args.gemm_n)
    print(machine.markdown(described, roofline), flush=True)
    shape = trunk_shape(args.frozen_convs)
    first = args.frozen_convs + 1
    gflop = machine.conv_gflop(first, 13) if first <= 13 else 0.0  # forward, per image
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, *shape, generator=rng).to(torch.float16).float()
    y = (torch.rand(args.rows, N_LABELS, generator=rng) < 0.3).float()
    cpu = torch.device("cpu")
    rows = []
    for precision in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            config = TrainConfig(k=3, lr=1e-7, epochs=1, batch_size=64, device="cpu",
                                 precision=precision)
            net = fresh_net(args.frozen_convs, config)
            data = x
            if layout == "channels_last":
                net, data = (net.to(memory_format=torch.channels_last),
                             x.contiguous(memory_format=torch.channels_last))
            optimizer = make_optimizer(net, config)
            loss_fn = torch.nn.BCEWithLogitsLoss()

            def step(batch: torch.Tensor, target: torch.Tensor, net=net, precision=precision,
                     optimizer=optimizer, loss_fn=loss_fn) -> None:
                with autocast(cpu, precision):
                    outputs = net({"trunk": batch})
                loss = loss_fn(outputs.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            net.train()
            step(data[:8], y[:8])  # warm-up: oneDNN primitives
            start = time.perf_counter()
            for i in range(0, args.rows, 64):
                step(data[i:i + 64], y[i:i + 64])
            train_s = time.perf_counter() - start
            net.eval()
            with torch.inference_mode(), autocast(cpu, precision):
                net({"trunk": data[:8]})
                start = time.perf_counter()
                for i in range(0, args.rows, 256):
                    net({"trunk": data[i:i + 256]})
            eval_s = time.perf_counter() - start
            dtype = "bf16" if precision == "bf16" and described["native_bf16"] else "fp32"
            train_gflops = 2 * gflop * args.rows / train_s  # forward + weight gradient
            eval_gflops = gflop * args.rows / eval_s
            row = {"precision": precision, "layout": layout,
                   "train_img_s": round(args.rows / train_s, 1),
                   "train_conv_gflops": round(train_gflops, 1),
                   "train_fraction": machine.fraction(train_gflops, roofline, dtype),
                   "eval_img_s": round(args.rows / eval_s, 1),
                   "eval_conv_gflops": round(eval_gflops, 1),
                   "eval_fraction": machine.fraction(eval_gflops, roofline, dtype),
                   "load": machine.load()}
            rows.append(row)
            print(row, flush=True)
    net = fresh_net(args.frozen_convs, TrainConfig(k=3, lr=1e-7, epochs=1, batch_size=64))
    result = {"machine": described, "roofline": roofline, "frozen_convs": args.frozen_convs,
              "rows": args.rows, "conv_gflop_per_image_forward": round(gflop, 3),
              "input_gradient_of_stored_features": input_gradient_computed(net, x[:2]),
              "input_gradient_if_input_required_it": input_gradient_computed(
                  net, x[:2].clone().requires_grad_()),
              "variants": rows}
    out = BENCH / f"epoch-variants-{args.frozen_convs}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frozen-convs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--precision", nargs="+", default=["fp32"],
                        help="one or more train.precision values, timed one after another")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fashiondvc-epoch"))
    parser.add_argument("--variants", action="store_true",
                        help="issue 14 item 2: precisions and layouts side by side")
    parser.add_argument("--rows", type=int, default=256, help="rows for --variants")
    parser.add_argument("--gemm-n", type=int, default=2048, help="GEMM roofline size")
    args = parser.parse_args()
    if args.variants:
        variants(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"features-{args.frozen_convs}.npy"
    if not path.exists():
        write_features(path, args.frozen_convs)
    features = {"trunk": np.load(path, mmap_mode="r")}  # as StoredFeatures.array opens it
    rng = np.random.default_rng(0)
    targets = (rng.random((N_IMAGES, N_LABELS)) < 0.3).astype(np.float32)
    mask = np.ones_like(targets)
    is_test = np.repeat(rng.random(N_IMAGES // 11 + 1) < 0.33, 11)[:N_IMAGES]
    train = FeatureSet(features, np.flatnonzero(~is_test), targets, mask)
    test = FeatureSet(features, np.flatnonzero(is_test), targets, mask)
    result = {
        "machine": machine.describe(), "roofline": machine.gemm_roofline(args.gemm_n),
        "frozen_convs": args.frozen_convs, "threads": torch.get_num_threads(),
        "train_rows": len(train), "test_rows": len(test), "in_memory": "trunk" in train.cache,
        "runs": [],
    }
    for precision in args.precision:  # side by side in one process, same rows and page cache
        config = TrainConfig(k=3, lr=1e-7, epochs=args.epochs, batch_size=64, device="cpu",
                             precision=precision)
        net = fresh_net(args.frozen_convs, config)
        marks, loads = [time.perf_counter()], []

        def on_epoch(_: dict, marks=marks, loads=loads) -> None:
            marks.append(time.perf_counter())
            loads.append(machine.load())

        fit(net, train, test, config, on_epoch=on_epoch)
        run = {"precision": precision, "seconds_per_epoch": [round(s, 1) for s in np.diff(marks)],
               "load": loads,  # peak RSS of the process so far (earlier precisions included)
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
    first = result["runs"][0]["seconds_per_epoch"][-1]
    for run in result["runs"]:
        run["speedup_vs_first"] = round(first / run["seconds_per_epoch"][-1], 2)
    out = BENCH / f"epoch-{args.frozen_convs}-{'-'.join(args.precision)}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
