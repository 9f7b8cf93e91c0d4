"""A tiny search setup shared by test_search and test_web: sample photos, random net, index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashiondvc.index import SearchIndex, build_index
from fashiondvc.labels import LABEL_SETS
from fashiondvc.net import build_net, save_net
from fashiondvc.sample import make_sample_archive

N_PHOTOS = 24
LABELS = list(LABEL_SETS["colors11"])
CONFIG = {"labels": LABELS, "image_size": 32, "weights": "random", "frozen_convs": 13,
          "hidden": 16, "dropout": 0.5}


@dataclass
class Collection:
    model: Path
    images: Path
    index_dir: Path
    index: SearchIndex


def save_tiny_net(path: Path, seed: int = 0) -> Path:
    """A random-weights network at 32 px, saved like the train stage saves one."""
    net = build_net("random", 13, 32, CONFIG["hidden"], len(LABELS), 0.5, seed=seed)
    save_net(net, path, CONFIG)
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
