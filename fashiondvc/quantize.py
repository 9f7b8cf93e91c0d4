"""The int8 frozen trunk (``featurize.precision: int8``): post-training quantization.

The frozen part (`fashiondvc.backbones.FrozenPart`), side features included, is converted to an
OpenVINO model and quantized by NNCF's post-training quantization (8-bit symmetric weights per
output channel, 8-bit activations, fast bias correction), calibrated on `CALIBRATION_SIZE`
stored images picked with `CALIBRATION_SEED` (`calibration_rows`). Library chosen by
measurement, side by side on one machine (bench/int8.md): OpenVINO int8 ran the 13-conv trunk
3.8x faster than torch bf16 with a pooled-feature cosine >= 0.9992 to fp32; ONNX Runtime int8
and torch's own x86 int8 path were slower, and torch's less faithful (0.9975).

The featurize stage quantizes once and stores the model's two files (`Int8Trunk.files`) beside
the features; the train stage copies them into ``net.pt``, so the index, a one-off search, the
server and the logged MLflow model all run the very bytes the features came from. Quantization
is deterministic: the same photos and weights give the same files and the same features.

OpenVINO and NNCF are an optional extra (``pip install 'fashiondvc[int8]'``); `missing` says
when they are absent, and the caller falls back to float with one line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from fashiondvc.errors import FashionError

#: Stored images the activation ranges are calibrated on, and the seed that picks them.
CALIBRATION_SIZE, CALIBRATION_SEED = 32, 0
#: The libraries of the int8 path (the ``int8`` extra).
LIBRARIES = ("openvino", "nncf")


def missing(what: str = "featurize.precision: int8") -> str | None:
    """Why ``what`` cannot run here (a one-line reason), or None if the int8 path can."""
    absent = [name for name in LIBRARIES if importlib.util.find_spec(name) is None]
    if absent:
        return f"{what} needs {' and '.join(absent)} (pip install 'fashiondvc[int8]')"
    return None


def versions() -> dict[str, str]:
    """The installed versions of `LIBRARIES` (recorded in the features' metadata)."""
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def calibration_rows(n_images: int, size: int = CALIBRATION_SIZE,
                     seed: int = CALIBRATION_SEED) -> list[int]:
    """The store rows the quantizer is calibrated on: ``size`` distinct rows (all of them if
    there are fewer), picked with ``seed``, in increasing order.

    They are drawn from every stored image, not from the training split only: calibration sees
    no labels, only activation ranges, and tying featurize to the split would rerun the
    pipeline's most expensive stage whenever the split changes.
    """
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_images, size=min(size, n_images), replace=False))


@contextlib.contextmanager
def _quiet():
    """Silence the converter's and quantizer's own chatter (tracing FutureWarnings, NNCF's
    progress bars and INFO/WARNING lines): the stage prints its own summary."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class TrunkWithSide(torch.nn.Module):
    """A frozen part as one graph with two outputs, ``(trunk, side)``, for the converter."""

    def __init__(self, part):
        super().__init__()
        self.part = part

    def forward(self, x):
        return self.part.forward_with_side(x)


class Int8Trunk:
    """A quantized frozen part: ``forward_with_side`` as `FrozenPart`'s, in int8.

    Build one with `quantize` (calibration) or `from_files` (the stored model). Inputs are
    normalised float32 images, NCHW; outputs float32 tensors ``(trunk, side)`` of the float
    part's shapes.
    """

    def __init__(self, xml: bytes, weights: bytes):
        import openvino as ov

        self.files = {"xml": xml, "bin": weights}
        core = ov.Core()
        model = core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, np.uint8)))
        # f32 inference: the quantized convolutions run in int8, the rest as in fp32 torch
        # (bf16 there would change the features with the CPU kind)
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})

    @classmethod
    def quantize(cls, part, images: np.ndarray) -> Int8Trunk:
        """Quantize ``part`` (a `FrozenPart`, float32), calibrated on ``images``.

        Parameters
        ----------
        part : FrozenPart
        images : ndarray of float32, shape (n, 3, H, W)
            Normalised calibration images (`fashiondvc.preprocess.normalize`).
        """
        import nncf
        import openvino as ov

        example = torch.from_numpy(images[:1])
        with _quiet():
            model = ov.convert_model(TrunkWithSide(part).float().eval(), example_input=example)
        model.reshape([-1, *images.shape[1:]])
        batches = [images[i:i + 8] for i in range(0, len(images), 8)]
        with _quiet():
            quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(images),
                                      fast_bias_correction=True)
        # the converters name nodes from process-wide counters: name them by position, so
        # the same photos and weights give the same file bytes
        quantized.set_friendly_name("fashiondvc-int8-trunk")
        for i, op in enumerate(quantized.get_ordered_ops()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trunk.xml"
            ov.save_model(quantized, path, compress_to_fp16=False)
            return cls(path.read_bytes(), path.with_suffix(".bin").read_bytes())

    @classmethod
    def from_files(cls, xml: bytes, weights: bytes) -> Int8Trunk:
        """The trunk of stored ``files`` (as `files` holds them).

        Raises
        ------
        FashionError
            If OpenVINO is not installed, or the bytes are not a model it reads.
        """
        reason = missing("this model's int8 trunk")
        if reason:
            raise FashionError(reason)
        try:
            return cls(xml, weights)
        except Exception as exc:  # noqa: BLE001 -- OpenVINO raises RuntimeError subclasses
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FashionError(f"int8 trunk: unreadable ({first})") from None

    def forward_with_side(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(trunk, side)`` of normalised float32 images ``x`` of shape (n, 3, H, W)."""
        out = self.compiled(x.float().contiguous().numpy())
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])
