"""Issue 22: the frozen VGG-16 trunk in int8, measured side by side in one process.

1. ``libraries``: the trunk alone (``--frozen`` convs, 224 px, batch 16, real photos) in torch
   fp32 and bf16, OpenVINO fp32 and int8 (NNCF, calibrated on ``--calibration`` other photos),
   ONNX Runtime int8 (static QDQ, per-channel weights) and torch's own x86 int8 (FX graph mode):
   images/s and each one's fidelity to torch fp32 (cosine of the globally pooled output, min
   and mean over photos; cosine of the side features; mean relative error of the map).
2. ``featurize``: the product's own `fashiondvc.features.featurize` over ``--images`` stored
   images (real photos, as the augment stage stores them) at ``featurize.precision`` fp32,
   bf16 and int8 (OpenVINO), the same DataLoader settings as ``params.yaml``; int8's one-off
   calibration is timed apart. Throughput as a fraction of this machine's GEMM peaks: fp32 and
   bf16 from torch (`machine.gemm_roofline`), int8 from an OpenVINO int8 MatMul (`int8_gemm`).

3. ``query`` (with ``--models FLOAT INT8``, two ``net.pt`` of one recipe trained on float and
   on int8 features): ``fashiondvc index`` of a new folder of ``--index-photos`` real photos,
   and a one-off ``fashiondvc search`` process, per model, beside ``import torch``.

One command per machine kind (record which one it was: the JSON's ``machine``):

    .venv/bin/python bench/int8.py --out bench/int8-$(hostname).json [--models F.pt I.pt]

Needs ``../shared`` (the real archive and trunk) and the ``int8`` extra; a library that is not
installed is skipped with a line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

from fashiondvc import backbones  # noqa: E402
from fashiondvc.config import ExtractorConfig  # noqa: E402
from fashiondvc.features import FeatureExtractor, featurize  # noqa: E402
from fashiondvc.preprocess import load_rgb, model_input, normalize  # noqa: E402
from fashiondvc.quantize import TrunkWithSide  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/data/ClothingAttributeDataset.zip"
WEIGHTS = ROOT.parent / "shared/weights/vgg16_imagenet_features.pth"


def photos(n: int, offset: int) -> np.ndarray:
    with zipfile.ZipFile(ARCHIVE) as archive:
        names = sorted(m for m in archive.namelist() if m.endswith(".jpg"))
        rng = np.random.default_rng(0)
        chosen = rng.permutation(len(names))[offset:offset + n]
        return np.stack([model_input(load_rgb(archive.read(names[i]), names[i]), 224)
                         for i in chosen])


def timed(fn, batches, repeats=2):
    fn(batches[0])  # warm-up
    rates, outs = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        outs = [fn(b) for b in batches]
        rates.append(sum(len(b) for b in batches) / (time.perf_counter() - start))
    trunk = np.concatenate([o[0] for o in outs])
    side = np.concatenate([o[1] for o in outs])
    return float(np.median(rates)), trunk, side


def fidelity(ref, got):
    rt, rs = ref
    gt, gs = got
    pooled_r, pooled_g = rt.mean(axis=(2, 3)), gt.mean(axis=(2, 3))
    cos = (pooled_r * pooled_g).sum(1) / (np.linalg.norm(pooled_r, axis=1)
                                          * np.linalg.norm(pooled_g, axis=1))
    cos_side = (rs * gs).sum(1) / (np.linalg.norm(rs, axis=1) * np.linalg.norm(gs, axis=1))
    rel = np.abs(gt - rt).mean() / np.abs(rt).mean()
    return {"pooled_cos_min": float(cos.min()), "pooled_cos_mean": float(cos.mean()),
            "side_cos_min": float(cos_side.min()), "map_rel_err": float(rel)}


def int8_gemm(n: int = 2048, seconds: float = 1.0) -> float | None:
    """GOP/s of an OpenVINO int8 MatMul, ``n`` x ``n`` by ``n`` x ``n`` (the int8 peak the
    quantized convolutions can approach), or None without OpenVINO."""
    if importlib.util.find_spec("nncf") is None:
        return None
    import nncf
    import openvino as ov

    layer = torch.nn.Linear(n, n, bias=False).eval()
    x = torch.randn(n, n)
    model = ov.convert_model(layer, example_input=x)
    model = nncf.quantize(model, nncf.Dataset([x.numpy()]), subset_size=1)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    data = x.numpy()
    compiled(data)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        compiled(data)
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9


class JpegStore:
    """Images stored as the augment stage stores them (JPEG bytes), decoded on access."""

    def __init__(self, images: np.ndarray):
        from PIL import Image

        from fashiondvc.preprocess import encode_jpeg

        self.data = [encode_jpeg(Image.fromarray(a)) for a in images]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> np.ndarray:
        from fashiondvc.preprocess import decode_rgb

        return decode_rgb(self.data[i])


def featurize_section(images: np.ndarray, frozen: int, batch: int, workers: int) -> dict:
    """The product's featurize over ``images`` (uint8, stored as the augment stage stores them)
    at fp32, bf16 and int8, in this order; int8's calibration timed apart."""
    out = {}
    gflop = machine.conv_gflop(1, frozen, images.shape[1])
    for precision in ("fp32", "bf16", "int8"):
        if precision == "int8" and importlib.util.find_spec("nncf") is None:
            print("featurize int8: skipped (the int8 extra is not installed)")
            continue
        config = ExtractorConfig("vgg16", str(WEIGHTS), frozen, images.shape[1], precision)
        extractor = FeatureExtractor(config)
        calibration = 0.0
        if precision == "int8":
            start = time.perf_counter()
            extractor.quantize(list(images))
            calibration = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            featurize(JpegStore(images[:batch]), extractor, Path(tmp) / "w", batch_size=batch,
                      workers=0)  # warm-up
            start = time.perf_counter()
            featurize(JpegStore(images), extractor, Path(tmp) / "f", batch_size=batch,
                      workers=workers)
            seconds = time.perf_counter() - start
        rate = len(images) / seconds
        out[precision] = {"images_per_s": round(rate, 2), "seconds": round(seconds, 1),
                          "gop_per_s": round(rate * gflop, 1),
                          "calibration_s": round(calibration, 1), "load": machine.load()}
        print("featurize", precision, out[precision], flush=True)
    return out


def query_section(models: dict[str, Path], n_photos: int, searches: int) -> dict:
    """Per model (float and int8, each a trained ``net.pt``): ``fashiondvc index`` of a new
    folder of ``n_photos`` real photos (flip TTA, attributes embedding: the shipped recipe),
    then the median wall seconds of ``searches`` one-off ``fashiondvc search`` processes
    against that index, beside the same process's floor ``python -c "import torch"``."""
    import subprocess

    cli = [sys.executable, "-m", "fashiondvc.cli"]

    def wall(command):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        return time.perf_counter() - start

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        with zipfile.ZipFile(ARCHIVE) as archive:
            names = sorted(m for m in archive.namelist() if m.endswith(".jpg"))[:n_photos]
            for name in names:
                (folder / Path(name).name).write_bytes(archive.read(name))
        query = folder / Path(names[0]).name
        floor = [wall([sys.executable, "-c", "import torch"]) for _ in range(searches)]
        out["import_torch_s"] = round(float(np.median(floor)), 2)
        for label, model in models.items():
            index = Path(tmp) / f"index-{label}"
            seconds = wall([*cli, "index", "--model", str(model), "--images", str(folder),
                            "--out", str(index), "--tta", "flip", "--embedding", "attributes"])
            runs = [wall([*cli, "search", str(query), "--json", "--index", str(index),
                          "--model", str(model)]) for _ in range(searches)]
            out[label] = {"index_photos": n_photos, "index_s": round(seconds, 1),
                          "index_photos_per_s": round(n_photos / seconds, 2),
                          "search_s": round(float(np.median(runs)), 2), "load": machine.load()}
            print("query", label, out[label], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frozen", type=int, default=13)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--only", default="", help="libraries to run, e.g. torch_fp32,ov_int8")
    parser.add_argument("--featurize-images", type=int, default=192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip", default="", help="sections to skip: libraries,featurize")
    parser.add_argument("--models", nargs=2, type=Path, metavar=("FLOAT", "INT8"),
                        help="two trained net.pt of one recipe: float and int8 features")
    parser.add_argument("--index-photos", type=int, default=1856)
    parser.add_argument("--searches", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    part = backbones.frozen_part(backbones.get("vgg16"), str(WEIGHTS), args.frozen)
    test = photos(args.images, 0)
    calib = photos(args.calibration, 1000)
    norm = lambda a: normalize(torch.from_numpy(a)).contiguous()  # noqa: E731
    batches = [norm(test[i:i + args.batch]) for i in range(0, len(test), args.batch)]
    calib_batches = [norm(calib[i:i + 8]) for i in range(0, len(calib), 8)]
    results = {"machine": machine.describe(), "frozen_convs": args.frozen,
               "images": args.images, "batch": args.batch, "calibration": args.calibration}
    outputs = {}
    model = TrunkWithSide(part).eval()

    def torch_fn(dtype):
        import copy
        m = TrunkWithSide(copy.deepcopy(part)).to(dtype=dtype,
                                                  memory_format=torch.channels_last).eval()

        @torch.inference_mode()
        def run(x):
            t, s = m(x.to(dtype=dtype, memory_format=torch.channels_last))
            return t.float().numpy(), s.float().numpy()
        return run

    todo = args.only.split(",") if args.only else ["torch_fp32", "torch_bf16", "ov_fp32",
                                                    "ov_int8", "ort_int8", "torch_int8"]
    tmp = Path(tempfile.mkdtemp())
    needs = {"ov_fp32": "openvino", "ov_int8": "nncf", "ort_int8": "onnxruntime"}
    if "libraries" in args.skip:
        todo = []
    for name in todo:
        if name in needs and importlib.util.find_spec(needs[name]) is None:
            print(f"{name}: skipped ({needs[name]} is not installed)")
            continue
        t0 = time.perf_counter()
        if name == "torch_fp32":
            fn = torch_fn(torch.float32)
        elif name == "torch_bf16":
            fn = torch_fn(torch.bfloat16)
        elif name in ("ov_fp32", "ov_int8"):
            import openvino as ov
            core = ov.Core()
            ovm = ov.convert_model(model, example_input=batches[0])
            ovm.reshape([-1, 3, 224, 224])
            if name == "ov_int8":
                import nncf
                ovm = nncf.quantize(ovm, nncf.Dataset(calib_batches, lambda b: b.numpy()),
                                    subset_size=len(calib), fast_bias_correction=True)
            compiled = core.compile_model(ovm, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                       "PERFORMANCE_HINT": "LATENCY"})

            def fn(x, compiled=compiled):
                out = compiled(x.numpy())
                return out[0], out[1]
        elif name == "ort_int8":
            import onnxruntime as ort
            from onnxruntime.quantization import (
                CalibrationDataReader,
                QuantFormat,
                QuantType,
                quantize_static,
            )
            from onnxruntime.quantization.shape_inference import quant_pre_process
            fp = tmp / "trunk.onnx"
            torch.onnx.export(model, (batches[0],), str(fp), input_names=["x"],
                              output_names=["trunk", "side"], dynamo=False,
                              dynamic_axes={"x": {0: "n"}, "trunk": {0: "n"}, "side": {0: "n"}})
            pre = tmp / "trunk.pre.onnx"
            quant_pre_process(str(fp), str(pre), skip_symbolic_shape=True)

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter([{"x": b.numpy()} for b in calib_batches])

                def get_next(self):
                    return next(self.it, None)
            q = tmp / "trunk.int8.onnx"
            quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            so = ort.SessionOptions()
            so.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])

            def fn(x, sess=sess):
                t, s = sess.run(None, {"x": x.numpy()})
                return t, s
        elif name == "torch_int8":
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
            torch.backends.quantized.engine = "x86"
            import copy
            seq = copy.deepcopy(torch.nn.Sequential(*list(part)))
            prepared = prepare_fx(seq.eval(), get_default_qconfig_mapping("x86"),
                                  example_inputs=(batches[0],))
            with torch.inference_mode():
                for b in calib_batches:
                    prepared(b)
            qseq = convert_fx(prepared)

            @torch.inference_mode()
            def fn(x, qseq=qseq):
                t = qseq(x)
                return t.numpy(), np.zeros((len(x), 1), np.float32)
        setup = time.perf_counter() - t0
        rate, trunk, side = timed(fn, batches)
        outputs[name] = (trunk, side)
        results[name] = {"images_per_s": round(rate, 2), "setup_s": round(setup, 1)}
        print(name, results[name], flush=True)
    ref = outputs.get("torch_fp32")
    if ref is not None:
        for name, out in outputs.items():
            if name != "torch_fp32":
                f = fidelity(ref, out)
                if name == "torch_int8":
                    f.pop("side_cos_min")
                results[name].update(f)
    if "featurize" not in args.skip:
        stored = photos(args.featurize_images, 1400)
        results["featurize"] = featurize_section(stored, args.frozen, 32, args.workers)
    if args.models:
        models = {"float": args.models[0], "int8": args.models[1]}
        results["query"] = query_section(models, args.index_photos, args.searches)
    results["roofline"] = machine.gemm_roofline()
    gops = int8_gemm()
    results["roofline"]["int8_openvino"] = round(gops, 1) if gops else None
    for precision, entry in results.get("featurize", {}).items():
        peak = results["roofline"].get({"int8": "int8_openvino"}.get(precision, precision))
        entry["fraction_of_peak"] = round(entry["gop_per_s"] / peak, 3) if peak else None
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
