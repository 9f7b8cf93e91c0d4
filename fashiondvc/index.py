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
import json
import os
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from fashiondvc.errors import FashionError, describe
from fashiondvc.io import atomic_path, sha256_file, walk_files
from fashiondvc.predictor import Predictor
from fashiondvc.preprocess import IMAGE_SUFFIXES, display_name, load_rgb
from fashiondvc.retrieval import search_vectors

INDEX_FILE, PATHS_FILE, META_FILE = "index.npz", "paths.csv", "meta.json"


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
    tta: str = "none"
    embedding: str = "hidden"

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, row: int) -> Path:
        """The photo of ``row``: the collection root joined with the path the index recorded.

        Symbolic links are followed, as the indexer followed them (`collection_files`): a
        photo linked from outside the folder is served like any other. A recorded path that
        is absolute or climbs out with ``..`` (an edited ``paths.csv``; the indexer never
        writes one) is refused.
        """
        if not 0 <= row < len(self.paths):
            raise FashionError(f"no photo {row} in the index ({len(self.paths)} photos)")
        relative = PurePosixPath(self.paths[row])
        if relative.is_absolute() or ".." in relative.parts or Path(self.paths[row]).anchor:
            raise FashionError(f"{display_name(self.paths[row])}: outside the collection folder")
        return self.root.absolute() / relative

    def predicted(self, row: int) -> list[str]:
        """Names of the attributes predicted for ``row`` (probability >= threshold)."""
        return [n for n, p in zip(self.labels, self.probs[row], strict=True)
                if p >= self.threshold]

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index to ``folder``, replacing it atomically."""
        folder = Path(folder)
        with atomic_path(folder, is_dir=True) as tmp:
            np.savez(tmp / INDEX_FILE, probs=self.probs.astype(np.float32),
                     embeddings=self.embeddings.astype(np.float32))
            # surrogateescape: a file name that is not valid UTF-8 (b"caf\xe9.jpg", an old
            # archive's Latin-1) is written as its bytes on disk, and read back to the same name
            with open(tmp / PATHS_FILE, "w", newline="", encoding="utf-8",
                      errors="surrogateescape") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(["path", "sha256"])
                writer.writerows(zip(self.paths, self.hashes, strict=True))
            root = self.root if self.root.is_absolute() else Path(
                os.path.relpath(self.root.resolve(), folder.resolve()))
            (tmp / META_FILE).write_text(json.dumps({
                "root": root.as_posix(), "labels": self.labels, "threshold": self.threshold,
                "model_sha256": self.model_sha256, "image_size": self.image_size,
                "precision": self.precision, "tta": self.tta, "embedding": self.embedding,
                "n_images": len(self),
                "skipped": self.skipped},
                indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SearchIndex:
        """Read an index written by `save` (without pandas: a query's start-up time).

        Raises
        ------
        FashionError
            One line naming ``folder`` if it holds no index, or if a file of it is missing,
            truncated or damaged (a partial ``dvc pull``, a full disk), with what to rerun.
        """
        folder = Path(folder)
        if not (folder / META_FILE).exists():
            if not folder.is_absolute() and not Path("dvc.yaml").exists():
                raise FashionError(f"{folder}: not found from {Path.cwd()}, which is not a "
                                   "fashiondvc repository; run from the repository root or "
                                   "pass --index")
            raise FashionError(f"{folder} holds no search index: run `dvc repro index` first")
        rerun = ("rerun `dvc repro index` (or `fashiondvc index` for an index of your own), "
                 "or dvc pull it again")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            with np.load(folder / INDEX_FILE) as arrays:
                probs, embeddings = arrays["probs"], arrays["embeddings"]
            with open(folder / PATHS_FILE, newline="", encoding="utf-8",
                      errors="surrogateescape") as handle:
                table = list(csv.DictReader(handle))
            paths, hashes = [row["path"] for row in table], [row["sha256"] for row in table]
            counts = {len(probs), len(embeddings), len(table), int(meta["n_images"])}
            root = Path(meta["root"])
            fields = dict(labels=list(meta["labels"]), threshold=float(meta["threshold"]),
                          model_sha256=str(meta["model_sha256"]),
                          image_size=int(meta["image_size"]),
                          precision=meta.get("precision", "fp32"),
                          skipped=list(meta.get("skipped", [])), tta=meta.get("tta", "none"),
                          embedding=meta.get("embedding", "hidden"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, csv.Error,
                zipfile.BadZipFile, zlib.error) as exc:
            # a partial `dvc pull`, a full disk, a file written by something else
            raise FashionError(f"{folder}: unreadable search index ({describe(exc)}); "
                               f"{rerun}") from None
        if len(counts) != 1:
            raise FashionError(f"{folder}: index files disagree on the number of photos; "
                               f"{rerun}")
        return cls(root=root if root.is_absolute() else Path(os.path.normpath(folder / root)),
                   paths=paths, hashes=hashes, probs=probs, embeddings=embeddings, **fields)


def collection_files(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Photo files under ``folder`` (`IMAGE_SUFFIXES`, recursively, hidden ones left out),
    sorted, following symbolic links to files and folders (`fashiondvc.io.walk_files`: each
    real file once, link loops end), and the files left out with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FashionError(f"search.images: {display_name(folder)} is not a folder")
    files, left_out = walk_files(folder, IMAGE_SUFFIXES)
    if not files:
        raise FashionError(f"search.images: no photo files ({', '.join(IMAGE_SUFFIXES)}) in "
                           f"{display_name(folder)}")
    return files, left_out


def build_index(model_path: str | os.PathLike, images_dir: str | os.PathLike,
                out_dir: str | os.PathLike, *, threshold: float = 0.5, batch_size: int = 16,
                predictor: Predictor | None = None, tta: str = "none",
                embedding: str = "hidden", model_sha256: str | None = None
                ) -> tuple[SearchIndex, dict[str, int]]:
    """Index every photo under ``images_dir`` into ``out_dir``.

    Each photo goes through ``predictor`` (default: the model's, `Predictor.from_file`, with
    ``tta``, ``evaluate.tta``, and ``embedding``, ``search.embedding``; a given one comes with
    its network file's ``model_sha256``). Rows
    of an existing index at ``out_dir`` built with the same model are reused for photos whose
    bytes did not change. Unreadable images are skipped and listed in ``meta.json``.

    Returns
    -------
    index : SearchIndex
    counts : dict
        ``computed``, ``reused`` and ``skipped`` photo counts.
    """
    images_dir = Path(images_dir)
    files, left_out = collection_files(images_dir)
    model_sha = model_sha256 or sha256_file(model_path)
    predictor = predictor or Predictor.from_file(model_path, tta, embedding)
    cache = _previous_rows(out_dir, model_sha, predictor)
    paths, hashes, probs, embeddings, skipped = [], [], [], [], []
    pending: list[tuple[int, Image.Image]] = []
    counts = {"computed": 0, "reused": 0, "skipped": 0}
    for path, reason in left_out:
        relative = path.relative_to(images_dir).as_posix()
        print(f"index: skipping {display_name(relative)}: {reason}")
        skipped.append(relative)

    def flush() -> None:
        p, e = predictor.images([image for _, image in pending])
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
                print(f"index: skipping {exc}")  # exc names the file with display_name
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
    hidden = predictor.width
    index = SearchIndex(
        root=images_dir, paths=paths, hashes=hashes, labels=predictor.labels,
        probs=np.stack(probs).reshape(len(paths), len(predictor.labels)),
        embeddings=np.stack(embeddings).reshape(len(paths), hidden), threshold=threshold,
        model_sha256=model_sha, image_size=predictor.image_size,
        precision=predictor.precision, skipped=skipped, tta=predictor.tta,
        embedding=predictor.embedding)
    index.save(out_dir)
    return index, counts


def build_index_from_features(model_path: str | os.PathLike, ingested_dir: str | os.PathLike,
                              split_csv: str | os.PathLike, features_dir: str | os.PathLike,
                              out_dir: str | os.PathLike, *, threshold: float = 0.5,
                              tta: str = "none", embedding: str = "hidden") -> SearchIndex:
    """Index the ingested photos from the stored features of their copy 0: no trunk pass.

    Copy 0 of a photo is the photo resized, JPEG-stored and run through the feature extractor
    exactly as `Predictor` runs a query (its mirror as `Predictor` mirrors it with
    ``tta="flip"``), so the rows equal what `build_index` would compute, in seconds instead
    of minutes.
    """
    import pandas as pd
    import torch

    from fashiondvc.net import load_net
    from fashiondvc.rows import load_splits, scores

    net, config = load_net(model_path)
    images = Path(ingested_dir) / "images"
    data = load_splits(Path(ingested_dir) / "labels.csv", split_csv, features_dir,
                       config.labels, config.inputs, extractor=config.extractor,
                       mirror=tta == "flip")
    split = pd.read_csv(split_csv).sort_values("index")
    rows = np.flatnonzero(split["copy"].to_numpy() == 0)
    paths = [f"{int(i):06d}.jpg" for i in split["image_id"].to_numpy()[rows]]
    probs, embedded = scores(net, data, rows, torch.device("cpu"), tta=tta)
    index = SearchIndex(
        root=images, paths=paths, hashes=[sha256_file(images / p) for p in paths],
        labels=list(config.labels), probs=probs,
        embeddings=search_vectors(probs, embedded, embedding), threshold=threshold,
        model_sha256=sha256_file(model_path), image_size=config.extractor.image_size,
        precision=config.extractor.precision, tta=tta, embedding=embedding)
    index.save(out_dir)
    return index


def _previous_rows(folder: str | os.PathLike, model_sha: str,
                   predictor: Predictor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``sha256 -> (probs, embedding)`` from an index of the same model, precision and TTA,
    else {}."""
    try:
        old = SearchIndex.load(folder)
    except (FashionError, OSError, ValueError, KeyError, TypeError):
        return {}
    if (old.model_sha256, old.labels, old.precision, old.tta, old.embedding) != (
            model_sha, predictor.labels, predictor.precision, predictor.tta,
            predictor.embedding):
        return {}
    return {h: (old.probs[i], old.embeddings[i]) for i, h in enumerate(old.hashes)}


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a photo's bytes: the ``sha256`` column of ``paths.csv``."""
    return hashlib.sha256(data).hexdigest()


def _progress(items: list) -> Iterable:
    from fashiondvc.progress import progress

    return progress(items, desc="index", unit="photo")


def index_collection(params, model_path: str | os.PathLike, ingested: str | os.PathLike,
                     split_csv: str | os.PathLike, features_dir: str | os.PathLike,
                     out_dir: str | os.PathLike) -> tuple[SearchIndex, dict[str, int]]:
    """The index stage: ``search.images`` (null: the ingested photos, from their stored
    features) into ``out_dir``; returns the index and its ``computed``, ``reused`` and
    ``skipped`` photo counts."""
    from fashiondvc.io import repo_path

    threshold, tta, images = (params.evaluate.threshold, params.evaluate.tta,
                              params.search.images)
    embedding = params.search.embedding
    if images is None:
        index = build_index_from_features(model_path, ingested, split_csv, features_dir,
                                          out_dir, threshold=threshold, tta=tta,
                                          embedding=embedding)
        return index, {"computed": 0, "reused": len(index), "skipped": 0}
    return build_index(model_path, repo_path(images), out_dir, threshold=threshold, tta=tta,
                       embedding=embedding)
