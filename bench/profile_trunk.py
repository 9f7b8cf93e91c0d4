"""Where the frozen trunk's time goes: torch.profiler per layer, with achieved GFLOP/s.

    .venv/bin/python bench/profile_trunk.py [--frozen-convs 13] [--batch 32]

Profiles one batch of the trunk (the feature extractor's frozen part, side features and colour
histograms aside) exactly as `featurize` prepares it (bf16 weights on CPUs with native bf16,
channels_last) and writes ``bench/profile.md``: time per operator and input shape,
and for each convolution its FLOPs (2 x multiply-adds) and achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from fashiondvc.config import ExtractorConfig  # noqa: E402
from fashiondvc.features import FeatureExtractor  # noqa: E402


def conv_flops(shapes: list) -> float:
    """FLOPs of a 3x3/pad-1 convolution from profiler input shapes [x, weight, ...]."""
    (n, _, h, w), (c_out, c_in, kh, kw) = shapes[0], shapes[1]
    return 2.0 * n * h * w * c_out * c_in * kh * kw


def profile_trunk(frozen_convs: int, batch: int, precision: str) -> tuple[list[dict], float]:
    """Per (operator, input shape): calls, total ms, GFLOP/s for convs; and the total ms."""
    extractor = FeatureExtractor(ExtractorConfig(  # the frozen part as featurize prepares it
        backbone="vgg16", weights="random", frozen=frozen_convs, image_size=224,
        precision=precision), device="cpu")
    model, dtype = extractor.part, extractor.dtype
    x = torch.randn(batch, 3, 224, 224).to(dtype=dtype, memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    rows = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key not in ("aten::mkldnn_convolution", "aten::max_pool2d_with_indices",
                             "aten::clamp_min_", "aten::relu_", "aten::convolution_relu"):
            continue
        ms = event.self_cpu_time_total / 1000
        flops = conv_flops(event.input_shapes) if "convolution" in event.key else 0.0
        rows.append({"op": event.key, "shape": str(event.input_shapes[0]),
                     "calls": event.count, "ms": ms,
                     "gflops": flops * event.count / ms / 1e6 if flops else None})
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1000
    return sorted(rows, key=lambda r: -r["ms"]), total


def markdown(rows: list[dict], total: float, args: argparse.Namespace) -> str:
    conv_ms = sum(r["ms"] for r in rows if "convolution" in r["op"])
    conv_flops_total = sum(r["gflops"] * r["ms"] / 1e3 for r in rows if r["gflops"])
    lines = [
        f"### Profile of the frozen trunk ({args.frozen_convs} convs, batch {args.batch}, "
        f"{args.precision}, load {os.getloadavg()[0]:.1f})", "",
        f"One batch: {total:.0f} ms = {args.batch / total * 1e3:.1f} images/s; "
        f"convolutions {conv_ms:.0f} ms ({conv_ms / total:.0%}) at "
        f"{conv_flops_total / conv_ms * 1e3:.0f} GFLOP/s on average; "
        f"ReLU and max-pool the rest. `bench/profile_trunk.py`:", "",
        "| op | input shape | calls | ms | GFLOP/s |", "|---|---|---|---|---|"]
    for r in rows:
        gflops = f"{r['gflops']:.0f}" if r["gflops"] else ""
        lines.append(f"| {r['op']} | {r['shape']} | {r['calls']} | {r['ms']:.1f} | {gflops} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frozen-convs", type=int, default=13)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--out", type=Path, default=BENCH / "profile.md")
    args = parser.parse_args()
    rows, total = profile_trunk(args.frozen_convs, args.batch, args.precision)
    text = markdown(rows, total, args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
