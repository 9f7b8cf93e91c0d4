"""A tiny search setup shared by test_search and test_web: sample photos, random net, index."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig
from fashiondvc.features import FeatureExtractor
from fashiondvc.index import SearchIndex, build_index
from fashiondvc.labels import LABEL_SETS
from fashiondvc.net import build_net, save_net
from fashiondvc.sample import make_sample_archive

N_PHOTOS = 24
LABELS = list(LABEL_SETS["colors11"])
HIDDEN = 16
EXTRACTOR = ExtractorConfig(backbone="vgg16", weights="random", frozen=13, image_size=32,
                            precision="fp32")


@cache
def _trunk_shape(extractor: ExtractorConfig) -> tuple[int, ...]:
    return FeatureExtractor(extractor).shapes()["trunk"]


def model_config(**extractor: object) -> ModelConfig:
    """The tiny network's config: VGG-16 random weights at 32 px, a 16-unit flatten head;
    ``extractor`` overrides `EXTRACTOR`'s fields (e.g. ``weights``, ``precision``)."""
    ex = replace(EXTRACTOR, **extractor)
    return ModelConfig(labels=tuple(LABELS), extractor=ex,
                       input_shapes={"trunk": _trunk_shape(
                           replace(ex, weights="random", precision="fp32"))},
                       train=TrainConfig(k=2, lr=0.003, epochs=1, batch_size=16),
                       head="flatten", hidden=HIDDEN, dropout=0.5)


@dataclass
class Collection:
    model: Path
    images: Path
    index_dir: Path
    index: SearchIndex


def save_tiny_net(path: Path, seed: int = 0, **extractor: object) -> Path:
    """A random-weights network at 32 px, saved like the train stage saves one;
    ``extractor`` as for `model_config`."""
    config = model_config(**extractor)
    save_net(build_net(config, seed=seed), path, config)
    return path


def make_collection(folder: Path, *, split_label: str | None = None) -> Collection:
    """Sample photos, a tiny net and an index of the photos in ``folder``.

    With ``split_label``, the index threshold is set to that label's median probability, so the
    label is predicted for about half the photos (a random net predicts ~0.5 for everything).
    """
    root = make_sample_archive(folder / "sample", n_images=N_PHOTOS, folder=True)
    model = save_tiny_net(folder / "net.pt")
    index_dir = folder / "index"
    index, _ = build_index(model, root / "images", index_dir)
    if split_label is not None:
        column = index.probs[:, LABELS.index(split_label)]
        index.threshold = float(np.median(column))
        index.save(index_dir)
        index = SearchIndex.load(index_dir)
    return Collection(model, root / "images", index_dir, index)
