"""The machine a benchmark ran on, and its own large-GEMM roofline, for every bench script.

Figures from different CPUs only compare as fractions of what each CPU can do. `describe`
says which CPU it was (model, the SIMD flags that decide the precision, clock, cores, torch
threads, load); `gemm_roofline` measures ``torch.matmul`` of two ``n`` x ``n`` matrices in fp32
and bf16 in the same process, the practical peak that convolutions (GEMMs inside oneDNN) can
approach. `fraction` puts a GFLOP/s figure against it.

    .venv/bin/python bench/machine.py [--n 2048]    # prints both as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

#: CPU flags that decide how fast fp32 / bf16 convolutions can run.
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def load() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def describe() -> dict:
    """CPU model, flags subset, clock, cores, torch threads, bf16 support, CUDA, load now.

    ``family_model`` (cpuinfo's ``cpu family/model/stepping``) tells CPU generations with the
    same name apart (AMD EPYC family 25 model 17 is Zen 4, family 26 is Zen 5); ``isa`` is
    the kernel set torch dispatches to, which ``ATEN_CPU_CAPABILITY`` and
    ``ONEDNN_MAX_CPU_ISA`` can lower (``isa_cap``): a run capped at AVX2 takes an AVX2-only
    CPU's code paths (and falls back to fp32: ``native_bf16`` false).
    """
    from fashiondvc.runtime import cpu_supports_bf16

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or "unknown",
        "flags": [f for f in FLAGS if f in flags],
        "family_model": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "mhz": float(info["cpu MHz"]) if "cpu MHz" in info else None,
        "isa": torch.backends.cpu.get_cpu_capability(),
        "isa_cap": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                               "MKL_ENABLE_INSTRUCTIONS") if k in os.environ},
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load": load(),
    }


def gemm_gflops(n: int, dtype: torch.dtype, seconds: float = 1.0,
                device: str = "cpu") -> float:
    """GFLOP/s of ``torch.matmul`` of two ``n`` x ``n`` matrices (best of repeated runs)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.matmul(a, b)  # warm-up: library dispatch, packing buffers
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        tick = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - tick)
    return 2 * n ** 3 / best / 1e9


def gemm_roofline(n: int = 2048, seconds: float = 1.0, device: str = "cpu") -> dict:
    """fp32 and bf16 large-GEMM GFLOP/s on this machine, now (``n`` x ``n`` matrices).

    bf16 on a CPU without native bf16 is emulated: its figure says so by being low.
    """
    return {"n": n, "fp32": round(gemm_gflops(n, torch.float32, seconds, device), 1),
            "bf16": round(gemm_gflops(n, torch.bfloat16, seconds, device), 1),
            "load": load()}


def fraction(gflops: float, roofline: dict, dtype: str) -> float:
    """``gflops`` as a fraction of the roofline's ``dtype`` (``fp32`` or ``bf16``) figure."""
    return round(gflops / roofline[dtype], 3)


def conv_gflop(first_conv: int, last_conv: int, image_size: int = 224) -> float:
    """Forward GFLOP per image of VGG-16's convs ``first_conv`` .. ``last_conv`` (1-based).

    2 x multiply-adds of each 3x3 conv at its feature-map size; ReLU and pooling not counted.
    """
    from fashiondvc.backbones import vgg16_layers

    total, size, conv = 0.0, image_size, 0
    for layer in vgg16_layers():
        if isinstance(layer, torch.nn.MaxPool2d):
            size //= 2
        elif isinstance(layer, torch.nn.Conv2d):
            conv += 1
            if first_conv <= conv <= last_conv:
                total += 2 * layer.in_channels * layer.out_channels * 9 * size * size
    return total / 1e9


def markdown(machine: dict, roofline: dict | None = None) -> str:
    """One line describing the machine (and its GEMM roofline) for a results file."""
    clock = f", {machine['mhz']:.0f} MHz" if machine.get("mhz") else ""
    isa = f", kernels {machine['isa']}" if machine.get("isa") else ""
    if machine.get("isa_cap"):
        isa += f" (capped: {machine['isa_cap']})"
    model = f" {machine['family_model']}" if machine.get("family_model") else ""
    line = (f"{machine['cpu']}{model} ({', '.join(machine['flags']) or 'no AVX2'}{clock}{isa}), "
            f"{machine['cores']} CPUs, torch {machine['torch']} with {machine['torch_threads']} "
            f"threads, native bf16: {'yes' if machine['native_bf16'] else 'no'}, load "
            f"{machine['load']}")
    if roofline:
        line += (f"; large GEMM ({roofline['n']}^2 torch.matmul) {roofline['fp32']:.0f} GFLOP/s "
                 f"fp32, {roofline['bf16']:.0f} GFLOP/s bf16 (load {roofline['load']})")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="matrix size (default 2048)")
    args = parser.parse_args()
    print(json.dumps({"machine": describe(), "roofline": gemm_roofline(args.n)}, indent=2))


if __name__ == "__main__":
    main()
