"""The search index: a photo collection's predicted attributes and embeddings, built once.

Every photo of a collection is run through the trained network once (`build_index`), or, for
the ingested photos, read from the stored features (`build_index_from_features`). The index
keeps, per photo, its predicted attribute probabilities and an embedding (the head's hidden
layer, `AttributeNet.embed`, L2-normalised), so a query is one matrix-vector product.

An index is a folder of three files, written atomically together:

``index.npz``
    ``probs`` (n, n_labels) and ``embeddings`` (n, hidden), float32.
``paths.csv``
    ``path`` (relative to the collection root, POSIX) and ``sha256`` of each photo, row-aligned.
``meta.json``
    ``root`` (the collection folder, relative to the index folder unless given absolute),
    ``labels``, ``threshold``, ``model_sha256``, ``image_size``, ``n_images``, ``skipped``.

Rebuilding reuses the rows of photos whose bytes are unchanged when the model is the same, so
adding photos to a collection only featurizes the new ones.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fashiondvc.errors import FashionError
from fashiondvc.io import atomic_path, sha256_file
from fashiondvc.preprocess import IMAGE_SUFFIXES, load_rgb
from fashiondvc.retrieval import l2_normalize

INDEX_FILE, PATHS_FILE, META_FILE = "index.npz", "paths.csv", "meta.json"
#: Largest query photo accepted, in pixels.
MAX_PIXELS = 40_000_000


# --------------------------------------------------------------------------- the index


@dataclass
class SearchIndex:
    """A collection's photos with their predicted attributes and embeddings, row-aligned."""

    root: Path
    paths: list[str]
    hashes: list[str]
    labels: list[str]
    probs: np.ndarray
    embeddings: np.ndarray
    threshold: float = 0.5
    model_sha256: str = ""
    image_size: int = 224
    precision: str = "fp32"
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, row: int) -> Path:
        """The photo of ``row``, guaranteed to lie inside the collection root."""
        if not 0 <= row < len(self.paths):
            raise FashionError(f"no photo {row} in the index ({len(self.paths)} photos)")
        root = self.root.resolve()
        path = (root / self.paths[row]).resolve()
        if not path.is_relative_to(root):
            raise FashionError(f"{self.paths[row]}: outside the collection folder")
        return path

    def predicted(self, row: int) -> list[str]:
        """Names of the attributes predicted for ``row`` (probability >= threshold)."""
        return [n for n, p in zip(self.labels, self.probs[row], strict=True)
                if p >= self.threshold]

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index to ``folder``, replacing it atomically."""
        import pandas as pd

        folder = Path(folder)
        with atomic_path(folder, is_dir=True) as tmp:
            np.savez(tmp / INDEX_FILE, probs=self.probs.astype(np.float32),
                     embeddings=self.embeddings.astype(np.float32))
            pd.DataFrame({"path": self.paths, "sha256": self.hashes}).to_csv(
                tmp / PATHS_FILE, index=False)
            root = self.root if self.root.is_absolute() else Path(
                os.path.relpath(self.root.resolve(), folder.resolve()))
            (tmp / META_FILE).write_text(json.dumps({
                "root": root.as_posix(), "labels": self.labels, "threshold": self.threshold,
                "model_sha256": self.model_sha256, "image_size": self.image_size,
                "precision": self.precision, "n_images": len(self), "skipped": self.skipped},
                indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SearchIndex:
        """Read an index written by `save` (without pandas: a query's start-up time)."""
        folder = Path(folder)
        if not (folder / META_FILE).exists():
            raise FashionError(f"{folder} holds no search index: run `dvc repro index` first")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            arrays = np.load(folder / INDEX_FILE)
            with open(folder / PATHS_FILE, newline="") as handle:
                table = list(csv.DictReader(handle))
            paths, hashes = [row["path"] for row in table], [row["sha256"] for row in table]
            probs, embeddings = arrays["probs"], arrays["embeddings"]
        except (OSError, ValueError, KeyError, csv.Error) as exc:
            raise FashionError(f"{folder}: unreadable search index ({exc})") from None
        if not len(probs) == len(embeddings) == len(table) == meta["n_images"]:
            raise FashionError(f"{folder}: index files disagree on the number of photos")
        root = Path(meta["root"])
        return cls(root=root if root.is_absolute() else Path(os.path.normpath(folder / root)),
                   paths=paths, hashes=hashes,
                   labels=list(meta["labels"]), probs=probs, embeddings=embeddings,
                   threshold=float(meta["threshold"]), model_sha256=meta["model_sha256"],
                   image_size=int(meta["image_size"]), precision=meta.get("precision", "fp32"),
                   skipped=list(meta.get("skipped", [])))


def collection_files(folder: str | os.PathLike) -> list[Path]:
    """JPEG and PNG files under ``folder`` (recursively, hidden ones left out), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FashionError(f"search.images: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise FashionError(f"search.images: no .jpg, .jpeg or .png files in {folder}")
    return files


# --------------------------------------------------------------------------- featurizing


class Featurizer:
    """The training preprocessing and network, for new photos.

    ``load_rgb`` -> ``model_input(image, image_size)`` -> ``normalize`` -> trunk -> network:
    returns attribute probabilities and L2-normalised embeddings. The trunk runs channels-last
    under ``precision`` (as the featurize stage runs it: ``featurize.precision``), the rest of the
    network in fp32 (as in training).
    """

    def __init__(self, net, config: dict, frozen=None, precision: str = "fp32"):
        import torch

        from fashiondvc.runtime import compute_dtype, prepare_trunk

        cpu = torch.device("cpu")
        self.dtype = compute_dtype(cpu, precision)  # validates precision too
        self.net, self.config, self.precision = net.eval(), config, precision
        self.labels = list(config["labels"])
        self.image_size = int(config["image_size"])
        if frozen is None:
            frozen = frozen_trunk(config["weights"], config["frozen_convs"])
        self.frozen = prepare_trunk(frozen, cpu, self.dtype)  # exactly as featurize runs it

    @classmethod
    def from_file(cls, model_path: str | os.PathLike, precision: str = "fp32") -> Featurizer:
        """Load a network saved by the train stage (``models/net.pt``)."""
        from fashiondvc.net import load_net

        net, config = load_net(model_path)
        config = {**config, "weights": weights_for_model(config["weights"], model_path)}
        return cls(net, config, precision=precision)

    def images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, embeddings)`` of RGB images, shapes (n, n_labels) and (n, hidden).

        Each image takes the training path: `preprocess.model_input` (resize, JPEG round trip),
        normalise, the trunk in its precision, its output rounded to the stored dtype.
        """
        import torch

        from fashiondvc.features import run_trunk, storage_dtype
        from fashiondvc.preprocess import model_input, normalize

        stored = torch.float32 if storage_dtype(self.precision) == np.float32 else torch.float16
        arrays = [model_input(image, self.image_size) for image in images]
        with torch.inference_mode():
            x = normalize(torch.from_numpy(np.stack(arrays)))
            trunk, side = run_trunk(self.frozen, x.to(dtype=self.dtype,
                                                      memory_format=torch.channels_last))
            trunk = trunk.to(stored).float().contiguous()
            embedded = self.net.embed(trunk, side if self.net.side_width else None)
            probs = self.net.probabilities(self.net.out(embedded))
        return probs.numpy().astype(np.float32), l2_normalize(embedded.numpy())

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


def frozen_trunk(weights: str, frozen_convs: int):
    """The frozen part of VGG-16 for ``model.weights``, as `trunk.split_vgg` returns it.

    A weights file (or torchvision's cached ImageNet download) gives only the frozen layers,
    built without torchvision and memory-mapped (`fashiondvc.vgg`): a one-off query starts in
    a third of the time. ``random`` and a missing ImageNet download take `fashiondvc.trunk`.
    """
    from fashiondvc.vgg import frozen_part, weights_file

    path = weights_file(weights)
    if path is not None:
        return frozen_part(path, frozen_convs)
    from fashiondvc.trunk import load_vgg16, split_vgg

    return split_vgg(load_vgg16(weights), frozen_convs)[0]


def build_index(model_path: str | os.PathLike, images_dir: str | os.PathLike,
                out_dir: str | os.PathLike, *, threshold: float = 0.5, batch_size: int = 16,
                precision: str = "fp32", featurizer: Featurizer | None = None
                ) -> tuple[SearchIndex, dict[str, int]]:
    """Index every photo under ``images_dir`` into ``out_dir``.

    Rows of an existing index at ``out_dir`` built with the same model are reused for photos
    whose bytes did not change. Unreadable images are skipped and listed in ``meta.json``.

    Returns
    -------
    index : SearchIndex
    counts : dict
        ``computed``, ``reused`` and ``skipped`` photo counts.
    """
    if batch_size < 1:
        raise FashionError(f"batch_size: must be >= 1, got {batch_size}")
    images_dir = Path(images_dir)
    files = collection_files(images_dir)
    model_sha = sha256_file(model_path)
    featurizer = featurizer or Featurizer.from_file(model_path, precision)
    cache = _previous_rows(out_dir, model_sha, featurizer)
    paths, hashes, probs, embeddings, skipped = [], [], [], [], []
    pending: list[tuple[int, Image.Image]] = []
    counts = {"computed": 0, "reused": 0, "skipped": 0}

    def flush() -> None:
        p, e = featurizer.images([image for _, image in pending])
        for (slot, _), row_p, row_e in zip(pending, p, e, strict=True):
            probs[slot], embeddings[slot] = row_p, row_e
        counts["computed"] += len(pending)
        pending.clear()

    for path in _progress(files):
        data = path.read_bytes()
        digest = sha256_bytes(data)
        relative = path.relative_to(images_dir).as_posix()
        if digest in cache:
            row_p, row_e = cache[digest]
            counts["reused"] += 1
        else:
            try:
                image = load_rgb(data, str(path))
            except (FashionError, Image.DecompressionBombError) as exc:
                print(f"index: skipping {exc}")
                skipped.append(relative)
                continue
            pending.append((len(paths), image))
            row_p = row_e = None
        paths.append(relative)
        hashes.append(digest)
        probs.append(row_p)
        embeddings.append(row_e)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    counts["skipped"] = len(skipped)
    if not paths:
        raise FashionError(f"search.images: no readable photos in {images_dir}")
    hidden = featurizer.net.out.in_features
    index = SearchIndex(
        root=images_dir, paths=paths, hashes=hashes, labels=featurizer.labels,
        probs=np.stack(probs).reshape(len(paths), len(featurizer.labels)),
        embeddings=np.stack(embeddings).reshape(len(paths), hidden), threshold=threshold,
        model_sha256=model_sha, image_size=featurizer.image_size,
        precision=featurizer.precision, skipped=skipped)
    index.save(out_dir)
    return index, counts


def build_index_from_features(model_path: str | os.PathLike, ingested_dir: str | os.PathLike,
                              split_csv: str | os.PathLike, features_dir: str | os.PathLike,
                              out_dir: str | os.PathLike, *, threshold: float = 0.5,
                              precision: str = "fp32") -> SearchIndex:
    """Index the ingested photos from the stored features of their copy 0: no trunk pass.

    Copy 0 of a photo is the photo resized, JPEG-stored and run through the trunk exactly as
    `Featurizer` runs a query (`preprocess.model_input`), so the rows equal what `build_index`
    would compute, in seconds instead of minutes. ``precision`` is ``featurize.precision``.
    """
    import pandas as pd
    import torch

    from fashiondvc.net import load_net
    from fashiondvc.retrieval import embed_rows
    from fashiondvc.train import load_splits, loader, predict

    net, config = load_net(model_path)
    images = Path(ingested_dir) / "images"
    data = load_splits(Path(ingested_dir) / "labels.csv", split_csv, features_dir,
                       config["labels"], side=config.get("head") == "multiscale")
    split = pd.read_csv(split_csv).sort_values("index")
    rows = np.flatnonzero(split["copy"].to_numpy() == 0)
    paths = [f"{int(i):06d}.jpg" for i in split["image_id"].to_numpy()[rows]]
    outputs = predict(net, loader(data.subset(rows), 256, shuffle=False, seed=0),
                      torch.device("cpu"))
    index = SearchIndex(
        root=images, paths=paths, hashes=[sha256_file(images / p) for p in paths],
        labels=list(config["labels"]), probs=net.probabilities(outputs).numpy(),
        embeddings=embed_rows(net, data, rows), threshold=threshold,
        model_sha256=sha256_file(model_path), image_size=int(config["image_size"]),
        precision=precision)
    index.save(out_dir)
    return index


def _previous_rows(folder: str | os.PathLike, model_sha: str,
                   featurizer: Featurizer) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``sha256 -> (probs, embedding)`` from an index of the same model and precision, else {}."""
    try:
        old = SearchIndex.load(folder)
    except (FashionError, OSError, ValueError, KeyError, TypeError):
        return {}
    if (old.model_sha256, old.labels, old.precision) != (model_sha, featurizer.labels,
                                                         featurizer.precision):
        return {}
    return {h: (old.probs[i], old.embeddings[i]) for i, h in enumerate(old.hashes)}


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a photo's bytes: the ``sha256`` column of ``paths.csv``."""
    return hashlib.sha256(data).hexdigest()


def _progress(items: list) -> Iterable:
    from fashiondvc.progress import progress

    return progress(items, desc="index", unit="photo")
