"""The search engine the paper was built for: query an index by photo, rank, filter, print.

A query photo goes through `fashiondvc.predictor.Predictor` (the feature extractor and the
network); ranking is one matrix-vector product, cosine similarity against the index's
L2-normalised embeddings, with optional attribute filters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashiondvc.errors import FashionError
from fashiondvc.index import SearchIndex, sha256_bytes
from fashiondvc.predictor import Predictor
from fashiondvc.preprocess import display_name
from fashiondvc.retrieval import l2_normalize
from fashiondvc.words import TextQuery, parse_text

# --------------------------------------------------------------------------- queries


@dataclass
class Hit:
    """One search result."""

    row: int
    path: str
    score: float
    attributes: list[str]


def parse_where(where: str | Iterable[str] | None, labels: Sequence[str]) -> list[str]:
    """Attribute names from ``"red,pattern_floral"`` (or a list); `FashionError` if unknown."""
    if where is None:
        return []
    items = where.split(",") if isinstance(where, str) else list(where)
    names = [name.strip() for name in items if name.strip()]
    for name in names:
        if name not in labels:
            raise FashionError(f"--where: unknown attribute {name!r} "
                               f"(this index knows: {', '.join(labels)})")
    return list(dict.fromkeys(names))


def rank(index: SearchIndex, embedding: np.ndarray, *, top: int = 10,
         where: Sequence[str] = (), exclude: Iterable[int] = ()) -> list[Hit]:
    """The ``top`` photos most similar to ``embedding`` (cosine), best first.

    Parameters
    ----------
    where : sequence of str
        Keep only photos whose predicted attributes include all of these.
    exclude : iterable of int
        Rows to leave out (e.g. the query itself when it is in the collection).
    """
    if top < 1:
        raise FashionError(f"--top: must be >= 1, got {top}")
    embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if embedding.shape[0] != index.embeddings.shape[1]:
        raise FashionError(f"query embedding has {embedding.shape[0]} values, the index "
                           f"{index.embeddings.shape[1]}")
    # einsum's own loop, not BLAS: a multi-threaded BLAS matrix-vector product waits for a
    # scheduler time slice (~16 ms) whenever the CPUs are busy; this takes ~1 ms for 20k rows
    scores = np.einsum("ij,j->i", index.embeddings, l2_normalize(embedding))
    keep = np.ones(len(index), dtype=bool)
    if where:
        columns = [index.labels.index(name) for name in where]
        keep &= (index.probs[:, columns] >= index.threshold).all(axis=1)
    keep[[r for r in exclude if 0 <= r < len(index)]] = False
    candidates = np.flatnonzero(keep)
    if len(candidates) > top:
        best = np.argpartition(-scores[candidates], top - 1)[:top]
        candidates = candidates[best]
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return [Hit(int(r), index.paths[r], float(scores[r]), index.predicted(int(r))) for r in order]


def rank_text(index: SearchIndex, query: TextQuery, *, top: int = 10) -> tuple[list[Hit], int]:
    """Photos matching a text query (`fashiondvc.words.parse_text`), most probable first.

    A photo matches when every ``include`` attribute is predicted (probability >= the index
    threshold) and no ``exclude`` one is. Matches rank by the joint probability the model gives
    the query, ``prod p(include) * prod (1 - p(exclude))`` (labels taken as independent), which
    is each hit's ``score``. Returns the ``top`` hits and the number of matches.
    """
    if top < 1:
        raise FashionError(f"--top: must be >= 1, got {top}")
    probs = index.probs.astype(np.float64)
    include = [index.labels.index(name) for name in query.include]
    exclude = [index.labels.index(name) for name in query.exclude]
    keep = ((probs[:, include] >= index.threshold).all(axis=1)
            & (probs[:, exclude] < index.threshold).all(axis=1))
    log_p = (np.log(np.clip(probs[:, include], 1e-12, 1)).sum(axis=1)
             + np.log(np.clip(1 - probs[:, exclude], 1e-12, 1)).sum(axis=1))
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(-log_p[candidates], kind="stable")][:top]
    hits = [Hit(int(r), index.paths[r], float(np.exp(log_p[r])), index.predicted(int(r)))
            for r in order]
    return hits, int(len(candidates))


def rows_with_hash(index: SearchIndex, digest: str) -> list[int]:
    """Rows holding a photo with these exact bytes (so a query does not find itself)."""
    return [i for i, h in enumerate(index.hashes) if h == digest]


class Searcher:
    """A loaded index and the network that built it, answering photo queries."""

    def __init__(self, index: SearchIndex, predictor: Predictor):
        if index.labels != predictor.labels:
            raise FashionError("the index and the model predict different attributes: "
                               "rebuild the index (dvc repro index)")
        self.index, self.predictor = index, predictor

    @classmethod
    def open(cls, index_dir: str | os.PathLike | SearchIndex,
             model: str | os.PathLike) -> Searcher:
        """An index (a folder, or one already loaded) and the model that built it: a file or a
        registry URI (``models:/fashiondvc-attributes@champion``, `fashiondvc.registry`),
        checked by the sha256 of its network file."""
        from fashiondvc.registry import open_model

        index = index_dir if isinstance(index_dir, SearchIndex) else SearchIndex.load(index_dir)
        opened = open_model(model, index.tta, index.embedding)
        if opened.sha256 != index.model_sha256:
            raise FashionError(f"the index was built with another model than "
                               f"{opened.description}: rebuild it (dvc repro index, or "
                               f"fashiondvc index --model {model})")
        return cls(index, opened.predictor)

    def query(self, data: bytes, name: str, *, top: int = 10,
              where: str | Iterable[str] | None = None) -> dict:
        """Attributes of the photo ``data`` and its most similar collection photos, as a dict.

        Collection photos with the very same bytes are left out of the results.
        """
        names = parse_where(where, self.index.labels)
        probs, embedding = self.predictor.photo(data, name)
        exclude = rows_with_hash(self.index, sha256_bytes(data))
        return self.result(probs, embedding, exclude, top=top, where=names)

    def query_row(self, row: int, *, top: int = 10,
                  where: str | Iterable[str] | None = None) -> dict:
        """Like `query`, for a photo already in the collection (leaving it out of the results)."""
        names = parse_where(where, self.index.labels)
        self.index.file(row)  # range check
        return self.result(self.index.probs[row], self.index.embeddings[row], [row], top=top,
                           where=names)

    def text(self, text: str, *, top: int = 10) -> dict:
        """Collection photos matching the words ``text`` (`fashiondvc.words.parse_text`),
        ranked by the model's probabilities (`rank_text`), as a dict."""
        query = parse_text(text, self.index.labels)
        hits, matches = rank_text(self.index, query, top=top)
        return {"text": text, "include": list(query.include), "exclude": list(query.exclude),
                "threshold": self.index.threshold, "matches": matches,
                "results": [_hit_dict(h) for h in hits]}

    def similar(self, embedding: Sequence[float], *, top: int = 10,
                where: str | Iterable[str] | None = None,
                exclude: Iterable[int] = ()) -> list[dict]:
        """Results for an embedding returned by an earlier query (e.g. with other filters)."""
        names = parse_where(where, self.index.labels)
        try:
            vector = np.asarray(embedding, dtype=np.float32)
        except (TypeError, ValueError):
            raise FashionError("embedding: expected a list of numbers") from None
        if vector.ndim != 1 or not np.isfinite(vector).all():
            raise FashionError("embedding: expected a list of finite numbers")
        hits = rank(self.index, vector, top=top, where=names, exclude=[int(r) for r in exclude])
        return [_hit_dict(h) for h in hits]

    def result(self, probs: np.ndarray, embedding: np.ndarray, exclude: list[int], *, top: int,
               where: list[str]) -> dict:
        """The answer to a query: attributes (most likely first), filters and results."""
        hits = rank(self.index, embedding, top=top, where=where, exclude=exclude)
        order = np.argsort(-probs, kind="stable")
        return {
            "threshold": self.index.threshold,
            "attributes": [{"name": self.index.labels[i], "probability": float(probs[i]),
                            "predicted": bool(probs[i] >= self.index.threshold)}
                           for i in order],
            "where": where,
            "exclude": exclude,
            "embedding": [float(v) for v in embedding],
            "results": [_hit_dict(h) for h in hits],
        }


def _hit_dict(hit: Hit) -> dict:
    return {"row": hit.row, "path": display_name(hit.path), "score": hit.score,
            "attributes": hit.attributes}


def default_top(params_path: str | os.PathLike = "params.yaml") -> int:
    """``search.top`` from ``params_path`` when it is readable, else 10.

    Read with the YAML 1.2 parser `fashiondvc.params` uses, without validating the whole file
    (a query must not load a weights file to check it).
    """
    from ruamel.yaml import YAML, YAMLError

    try:
        params = YAML(typ="safe", pure=True).load(Path(params_path).read_text()) or {}
        value = params.get("search", {})["top"]
    except (OSError, YAMLError, AttributeError, KeyError, TypeError):
        return 10
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 10


def format_words(result: dict, index: SearchIndex) -> str:
    """The human-readable answer of ``fashiondvc search --text``."""
    wanted = [*result["include"], *(f"no {name}" for name in result["exclude"])]
    lines = [f"{result['text']!r} -> {' + '.join(wanted)}: {result['matches']} of "
             f"{len(index)} photos in {display_name(index.root)} match (threshold "
             f"{result['threshold']:g}), most probable first:"]
    return "\n".join([*lines, *_hit_lines(result["results"], index, "  no photo matches")])


def _hit_lines(hits: list[dict], index: SearchIndex, empty: str) -> list[str]:
    """One line per result: rank, score, file, predicted attributes (or ``empty``)."""
    return [f"  {n:3d}  {hit['score']:.3f}  {Path(display_name(index.root)) / hit['path']}  "
            f"{', '.join(hit['attributes']) or '-'}" for n, hit in enumerate(hits, 1)] or [empty]


def format_text(result: dict, photo: str, index: SearchIndex) -> str:
    """The human-readable answer `fashiondvc search` prints."""
    predicted = [a for a in result["attributes"] if a["predicted"]]
    lines = [f"{display_name(photo)}: predicted attributes (threshold {result['threshold']:g})"
             + ("" if predicted else ": none; the most likely are")]
    for item in predicted or result["attributes"][:3]:
        bar = "#" * round(item["probability"] * 20)
        lines.append(f"  {item['name']:18s} {item['probability']:5.2f} {bar}")
    where = f", with {' + '.join(result['where'])}" if result["where"] else ""
    lines.append(f"\nMost similar of {len(index)} photos in {display_name(index.root)}{where} "
                 "(cosine):")
    lines += _hit_lines(result["results"], index, "  no photo matches the filters")
    return "\n".join(lines)

