"""A trained network with its feature extractor: new photos in, attributes and embeddings out.

The query path of every entry point (the index of a photo folder, ``fashiondvc search``,
``fashiondvc serve``, the logged MLflow model) is `Predictor`: `load_rgb` -> the feature
extractor (`fashiondvc.features.FeatureExtractor.photos`, the very object the featurize stage
runs) -> the network in fp32. Features equal stored ones by construction.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fashiondvc.config import ModelConfig
from fashiondvc.errors import FashionError
from fashiondvc.features import FeatureExtractor
from fashiondvc.preprocess import load_rgb
from fashiondvc.retrieval import search_vectors

#: Largest query photo accepted, in pixels.
MAX_PIXELS = 40_000_000


def int8_part(net):
    """The int8 frozen part saved with an int8 ``net`` (`fashiondvc.net.load_net`), else None
    (the extractor builds the float one from its weights)."""
    files = getattr(net, "int8_trunk", None)
    if files is None:
        return None
    from fashiondvc.quantize import Int8Trunk

    return Int8Trunk.from_files(files["xml"], files["bin"])


class Predictor:
    """``net`` (eval mode) with the extractor of its `ModelConfig` (built unless given).

    ``tta`` is ``evaluate.tta``: ``flip`` averages each photo with its mirror (twice the
    time), as the evaluate and index stages average stored rows (`fashiondvc.rows.scores`).
    ``embedding`` is ``search.embedding``, the vector search ranks by
    (`fashiondvc.retrieval.search_vectors`).
    """

    def __init__(self, net, config: ModelConfig, extractor: FeatureExtractor | None = None,
                 tta: str = "none", embedding: str = "hidden"):
        self.net, self.config, self.tta, self.embedding = net.eval(), config, tta, embedding
        self.extractor = extractor or FeatureExtractor(config.extractor, part=int8_part(net))
        self.labels = list(config.labels)
        self.image_size = config.extractor.image_size
        self.precision = config.extractor.precision

    @classmethod
    def from_file(cls, model_path: str | os.PathLike, tta: str = "none",
                  embedding: str = "hidden") -> Predictor:
        """Load a network saved by the train stage (``models/net.pt``) and its extractor."""
        from dataclasses import replace

        from fashiondvc.net import load_net

        net, config = load_net(model_path)
        extractor = replace(config.extractor,
                            weights=weights_for_model(config.extractor.weights, model_path))
        return cls(net, replace(config, extractor=extractor), tta=tta, embedding=embedding)

    @torch.inference_mode()
    def images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, embeddings)`` of upright RGB images, shapes (n, n_labels) and (n, `width`),
        float32; embeddings L2-normalised (`fashiondvc.retrieval.search_vectors`)."""
        probs, embedded = [], []
        for mirror in ((False, True) if self.tta == "flip" else (False,)):
            features = self.extractor.photos(images, mirror)
            hidden = self.net.embed({name: features[name].float() for name in self.config.inputs})
            probs.append(self.net.probabilities(self.net.out(hidden)).numpy())
            embedded.append(hidden.numpy())
        mean = np.mean(probs, axis=0).astype(np.float32)
        return mean, search_vectors(mean, np.mean(embedded, axis=0), self.embedding)

    @property
    def width(self) -> int:
        """Length of an embedding: the hidden layer's, or one value per attribute."""
        return len(self.labels) if self.embedding == "attributes" else self.net.out.in_features

    def photo(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, embedding)`` of one encoded photo.

        Raises `FashionError` if it is not an image or has more than `MAX_PIXELS` pixels (a
        small file can hold a huge, memory-filling image).
        """
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
        except Image.DecompressionBombError:
            width = height = None
        except (OSError, ValueError):
            width = height = 0  # load_rgb below gives the clear message
        if width is None or width * height > MAX_PIXELS:
            size = "" if width is None else f" ({width}x{height})"
            raise FashionError(f"{name}: too many pixels{size}; at most "
                               f"{MAX_PIXELS // 1_000_000} megapixels")
        probs, embeddings = self.images([load_rgb(data, name)])
        return probs[0], embeddings[0]


def weights_for_model(weights: str, model_path: str | os.PathLike) -> str:
    """``model.weights`` as saved in a model, found from wherever the model is used.

    A relative weights path was relative to the repository that trained the model; from
    another working directory (``fashiondvc search --model /repo/models/net.pt``) it is
    looked up from the nearest folder above the model file that holds a ``dvc.yaml``.
    ``imagenet``, ``random``, absolute paths and paths found from here are returned as given.
    """
    from fashiondvc.io import repo_path

    if weights in ("imagenet", "random") or Path(weights).is_absolute() or repo_path(
            weights).exists():
        return weights
    for folder in Path(model_path).resolve().parents:
        if (folder / "dvc.yaml").is_file():
            return str(folder / weights) if (folder / weights).exists() else weights
    return weights
