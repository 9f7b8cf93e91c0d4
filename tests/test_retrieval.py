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
