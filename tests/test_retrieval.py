"""Retrieval precision@k and its chance level, by hand."""

import numpy as np
import pytest

from fashiondvc.retrieval import chance_precision, precision_at_k


def test_precision_at_k_by_hand():
    query = np.array([[1.0, 0.0], [0.0, 1.0]])
    positive_q = np.array([[True, True], [False, False]])  # the second query has no positives
    collection = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    positive_c = np.array([[True, True], [True, False], [True, True]])
    assert precision_at_k(query, positive_q, collection, positive_c, k=2) == pytest.approx(0.75)
    assert precision_at_k(query, positive_q, collection, positive_c, k=10) == pytest.approx(
        (1 + 0.5 + 1) / 3)
    assert np.isnan(precision_at_k(query, positive_q[[1]], collection, positive_c, k=2))


def test_chance_precision_is_the_mean_share_of_attributes_a_random_photo_has():
    positive_q = np.array([[True, True], [True, False], [False, False]])
    positive_c = np.array([[True, True], [True, False], [False, False], [False, True]])
    # label rates in the collection: 0.5 and 0.5; query 1 shares (0.5 + 0.5) / 2, query 2 0.5
    assert chance_precision(positive_q, positive_c) == pytest.approx(0.5)
    positive_c = np.array([[True, False]] * 3 + [[False, False]])
    assert chance_precision(positive_q, positive_c) == pytest.approx((0.75 / 2 + 0.75) / 2)


def test_search_vectors_rank_by_the_hidden_layer_or_the_predicted_attributes():
    from fashiondvc.retrieval import search_vectors

    probs = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.1, 0.9, 0.5]], dtype=np.float32)
    hidden = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], dtype=np.float32)
    by_hidden = search_vectors(probs, hidden, "hidden")
    by_attributes = search_vectors(probs, hidden, "attributes")
    assert by_hidden.shape == (3, 2) and by_attributes.shape == (3, 3)
    assert np.allclose(np.linalg.norm(by_attributes, axis=1), 1)
    # photo 0's nearest: photo 2 by the hidden layer, photo 1 (same attributes) by attributes
    assert np.argmax((by_hidden @ by_hidden[0])[1:]) + 1 == 2
    assert np.argmax((by_attributes @ by_attributes[0])[1:]) + 1 == 1
    assert np.allclose(by_attributes[0], np.array([0.4, -0.4, 0.0]) / np.sqrt(0.32))


def test_an_attributes_index_answers_queries_in_the_same_space(tmp_path):
    from searchkit import make_collection

    from fashiondvc.index import SearchIndex, build_index
    from fashiondvc.predictor import Predictor
    from fashiondvc.search import Searcher

    collection = make_collection(tmp_path)
    index, _ = build_index(collection.model, collection.images, tmp_path / "attr",
                           embedding="attributes")
    loaded = SearchIndex.load(tmp_path / "attr")
    assert loaded.embedding == "attributes"
    assert loaded.embeddings.shape == (len(loaded), len(loaded.labels))
    assert np.allclose(loaded.embeddings, (loaded.probs - 0.5) / np.linalg.norm(
        loaded.probs - 0.5, axis=1, keepdims=True), atol=1e-6)
    searcher = Searcher.open(tmp_path / "attr", collection.model)
    assert searcher.predictor.embedding == "attributes"
    photo = collection.images / "000004.jpg"
    result = searcher.query(photo.read_bytes(), "q.png", top=3)
    assert len(result["embedding"]) == len(loaded.labels)
    # rows of a hidden-layer index are not reused for an attributes one
    _, counts = build_index(collection.model, collection.images, collection.index_dir,
                            predictor=Predictor.from_file(collection.model,
                                                          embedding="attributes"))
    assert counts["reused"] == 0
