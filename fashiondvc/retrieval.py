"""Retrieval quality of the search engine, measured on stored features: ``retrieval_p10``.

The collection is the training photos' copy-0 images (the resized originals), the queries the
test photos' copy-0 images, both embedded by the trained head (`AttributeNet.embed`).
"""

from __future__ import annotations

import os

import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _scored_queries(query_positive: np.ndarray, collection_positive: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both label matrices as bool, which queries count (>= 1 positive), and their sizes."""
    query_positive = np.asarray(query_positive, dtype=bool)
    collection_positive = np.asarray(collection_positive, dtype=bool)
    sizes = query_positive.sum(axis=1)
    return query_positive, collection_positive, sizes > 0, sizes


def precision_at_k(query_embeddings: np.ndarray, query_positive: np.ndarray,
                   collection_embeddings: np.ndarray, collection_positive: np.ndarray,
                   k: int = 10) -> float:
    """Mean precision@k of attribute agreement, retrieving by cosine similarity.

    For a query q with observed positive labels ``P(q)`` (a set of attribute names) and a
    retrieved photo r with observed positive labels ``P(r)``, the relevance of r is
    ``|P(q) & P(r)| / |P(q)|``: the share of the query's attributes that r also has (a missing
    label of r counts as not shared). Precision@k of q is the mean relevance of its top
    ``min(k, n_collection)`` results; the metric is its mean over the queries with at least one
    observed positive label (NaN when there are none).

    Parameters
    ----------
    query_embeddings, collection_embeddings : ndarray, shapes (n_q, d) and (n_c, d)
    query_positive, collection_positive : ndarray of bool, shapes (n_q, L) and (n_c, L)
        True where a label is observed and positive.
    """
    query_positive, collection_positive, valid, sizes = _scored_queries(query_positive,
                                                                        collection_positive)
    if not valid.any() or len(collection_embeddings) == 0:
        return float("nan")
    k = min(k, len(collection_embeddings))
    scores = l2_normalize(query_embeddings[valid]) @ l2_normalize(collection_embeddings).T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    shared = (query_positive[valid][:, None, :] & collection_positive[top]).sum(axis=2)
    return float((shared / sizes[valid][:, None]).mean())


def chance_precision(query_positive: np.ndarray, collection_positive: np.ndarray) -> float:
    """Expected `precision_at_k` of retrieval that ignores the images (any k): the baseline.

    A random collection photo shares on average ``mean_r |P(q) & P(r)| / |P(q)|`` of a query's
    attributes; the mean over queries with a positive label (NaN when there are none).
    """
    query_positive, collection_positive, valid, sizes = _scored_queries(query_positive,
                                                                        collection_positive)
    if not valid.any() or len(collection_positive) == 0:
        return float("nan")
    rate = collection_positive.mean(axis=0)  # share of the collection with each label
    return float(((query_positive[valid] @ rate) / sizes[valid]).mean())


def search_vectors(probs: np.ndarray, hidden: np.ndarray, embedding: str = "hidden"
                   ) -> np.ndarray:
    """The L2-normalised vectors search ranks by (``search.embedding``), float32.

    ``hidden``: the head's hidden layer, shape (n, hidden). ``attributes``: the predicted
    probabilities centred on 0.5, shape (n, n_labels), so that two photos are close when the
    model gives them the same attributes, and an attribute both surely lack counts as much as
    one both have. On validation photos of the recipe it ranks neighbours sharing more true
    attributes (P@10 0.587 against 0.529, reports/recipes/retrieval_choice.md).
    """
    vectors = probs - 0.5 if embedding == "attributes" else hidden
    return l2_normalize(np.asarray(vectors, dtype=np.float32))


def embed_rows(net, data, rows: np.ndarray, batch_size: int = 256, tta: str = "none",
               embedding: str = "hidden") -> np.ndarray:
    """`search_vectors` of stored rows ``rows`` of ``data`` (`rows.Splits`), in fp32; with
    ``tta="flip"`` of the mean over each image and its mirror."""
    from fashiondvc.rows import scores

    device = next(net.parameters()).device
    probs, embedded = scores(net, data, rows, device, tta=tta, batch_size=batch_size)
    if not len(embedded):
        return np.zeros((0, 0), np.float32)
    return search_vectors(probs, embedded, embedding)


def retrieval_metrics(net, data, split_csv: str | os.PathLike, k: int = 10,
                      tta: str = "none", embedding: str = "hidden") -> dict[str, float]:
    """``retrieval_p10`` and ``retrieval_p10_chance``: test copy-0 images against train ones.

    Relevance uses the ground-truth labels of ``data`` (see `precision_at_k`); the chance
    level is `chance_precision`. Empty if undefined. ``tta`` and ``embedding`` as in
    `embed_rows`.
    """
    import pandas as pd

    split = pd.read_csv(split_csv).sort_values("index")
    originals = (split["copy"] == 0).to_numpy()
    queries = np.intersect1d(data.test_rows, np.flatnonzero(originals))
    collection = np.intersect1d(data.train_rows, np.flatnonzero(originals))
    if len(queries) == 0 or len(collection) == 0:
        return {}
    positive = (data.targets > 0.5) & data.mask.astype(bool)
    value = precision_at_k(embed_rows(net, data, queries, tta=tta, embedding=embedding),
                           positive[queries],
                           embed_rows(net, data, collection, tta=tta, embedding=embedding),
                           positive[collection], k)
    if np.isnan(value):
        return {}
    return {f"retrieval_p{k}": value,
            f"retrieval_p{k}_chance": chance_precision(positive[queries], positive[collection])}
