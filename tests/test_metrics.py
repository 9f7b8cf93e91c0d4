"""Masked multi-label metrics against scikit-learn on the observed entries."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from fashiondvc import metrics

NAMES = ["a", "b", "c", "d"]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = rng.random((200, 4)) < 0.3
    probs = np.clip(y * 0.3 + rng.random((200, 4)) * 0.7, 0, 1)
    mask = rng.random((200, 4)) > 0.15
    return y, probs, mask


def test_micro_and_macro_f1_match_sklearn_on_fully_observed_labels(data):
    y, probs, _ = data
    pred = probs >= 0.5
    summary = metrics.summary(y, probs, None, 0.5)
    assert summary["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert summary["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert summary["accuracy_exact"] == pytest.approx((pred == y).all(axis=1).mean())


def test_masked_metrics_equal_sklearn_on_observed_entries(data):
    y, probs, mask = data
    pred = probs >= 0.5
    pooled = metrics.micro_f1(y, pred, mask)
    assert pooled == pytest.approx(f1_score(y[mask], pred[mask]))
    table = metrics.per_label(y, probs, mask, NAMES, 0.5)
    for j, row in table.iterrows():
        m = mask[:, j]
        assert row["precision"] == pytest.approx(precision_score(y[m, j], pred[m, j]))
        assert row["recall"] == pytest.approx(recall_score(y[m, j], pred[m, j]))
        assert row["f1"] == pytest.approx(f1_score(y[m, j], pred[m, j]))
        assert row["average_precision"] == pytest.approx(
            average_precision_score(y[m, j], probs[m, j]))
    summary = metrics.summary(y, probs, mask, 0.5)
    assert summary["mean_average_precision"] == pytest.approx(table["average_precision"].mean())
    assert summary["accuracy_labelwise"] == pytest.approx((pred == y)[mask].mean())


def test_missing_labels_do_not_count(data):
    y, probs, mask = data
    flipped = np.where(mask, y, ~y)  # change only unobserved truth
    assert metrics.micro_f1(flipped, probs >= 0.5, mask) == metrics.micro_f1(y, probs >= 0.5, mask)


def test_keras_accuracy_is_argmax_agreement():
    y = np.array([[0, 1, 0], [1, 0, 0]])
    probs = np.array([[0.1, 0.9, 0.2], [0.2, 0.8, 0.1]])
    assert metrics.keras_accuracy(y, probs) == 0.5


def test_pr_curves_have_one_curve_per_attribute(data):
    y, probs, mask = data
    curves = metrics.pr_curves(y, probs, mask, NAMES, points=20)
    assert sorted(curves["attribute"].unique()) == NAMES
    assert curves.groupby("attribute").size().max() <= 20
    for j, name in enumerate(NAMES):
        curve = curves[curves["attribute"] == name]
        # from the lowest cut (everything predicted: precision = the observed prevalence) to
        # the highest (recall 0, precision 1 by convention), recall never rising
        assert curve.iloc[0]["recall"] == 1
        assert curve.iloc[0]["precision"] == pytest.approx(y[mask[:, j], j].mean())
        assert (curve.iloc[-1]["recall"], curve.iloc[-1]["precision"]) == (0, 1)
        assert (np.diff(curve["recall"].to_numpy()) <= 0).all()


def test_pr_curves_by_hand():
    # a: scores 0.9 .. 0.4 with truth 1 0 1 1 0 0; b: perfectly ranked, 2 positives of 6;
    # c: no positive observed (no curve); the last row is unobserved for a and b, and would
    # put a top-scored negative first if it counted
    y = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    p = np.array([[.9, .1, .5], [.8, .2, .5], [.7, .3, .5], [.6, .4, .5], [.5, .5, .5],
                  [.4, .6, .5], [.95, .99, .5]])
    m = np.ones_like(y, dtype=bool)
    m[6, :2] = False
    curves = metrics.pr_curves(y, p, m, ["a", "b", "c"])
    assert list(curves.columns) == ["attribute", "recall", "precision"]
    assert curves["attribute"].tolist() == ["a"] * 7 + ["b"] * 7
    # one point per cut t (predicted: score >= t), lowest cut first, then (recall 0, prec. 1)
    a = curves[curves["attribute"] == "a"]
    assert a["recall"].tolist() == pytest.approx([1, 1, 1, 2 / 3, 1 / 3, 1 / 3, 0])
    #                    cut:  0.4    0.5    0.6    0.7    0.8    0.9
    assert a["precision"].tolist() == pytest.approx([3 / 6, 3 / 5, 3 / 4, 2 / 3, 1 / 2, 1, 1])
    b = curves[curves["attribute"] == "b"]
    assert b["recall"].tolist() == pytest.approx([1, 1, 1, 1, 1, 1 / 2, 0])
    assert b["precision"].tolist() == pytest.approx([2 / 6, 2 / 5, 2 / 4, 2 / 3, 1, 1, 1])
    # thinned to 3 points: the two ends and the middle one
    thin = metrics.pr_curves(y, p, m, ["a", "b", "c"], points=3)
    np.testing.assert_allclose(thin[thin["attribute"] == "a"][["recall", "precision"]],
                               [[1, 1 / 2], [2 / 3, 2 / 3], [0, 1]])


def test_a_label_never_observed_has_no_f1_and_stays_out_of_the_macro_average():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=float)
    p = np.array([[0.9, 0.2, 0.9], [0.1, 0.8, 0.1], [0.8, 0.3, 0.7]])
    m = np.ones_like(y, dtype=bool)
    m[:, 2] = False  # the third label is missing in every row
    table = metrics.per_label(y, p, m, ["a", "b", "c"])
    assert table["evaluated"].tolist() == [True, True, False]
    assert np.isnan(table.loc[2, "f1"]) and np.isnan(table.loc[2, "accuracy"])
    summary = metrics.summary(y, p, m)
    # label a: F1 1, label b: tp 1 fn 1 -> F1 2/3; the unobserved label does not count as 0
    assert summary["f1_macro"] == pytest.approx((1 + 2 / 3) / 2)


def test_tuned_thresholds_maximise_each_labels_f1():
    y = np.array([[1], [1], [0], [0], [1]], dtype=float)
    p = np.array([[0.30], [0.25], [0.20], [0.10], [0.40]])
    m = np.ones_like(y, dtype=bool)
    (cut,) = metrics.tune_thresholds(y, p, m)
    assert 0.20 < cut <= 0.25  # all three positives above it, both negatives below
    assert metrics.micro_f1(y, p >= cut, m) == 1.0
    assert metrics.micro_f1(y, p >= 0.5, m) == 0.0
    (default,) = metrics.tune_thresholds(np.zeros_like(y), p, m, default=0.5)
    assert default == 0.5  # no positive observed: nothing to tune


def test_frequency_baseline_predicts_the_frequent_labels_and_scores_prevalence():
    train = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=float)
    test = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=float)
    ones = np.ones_like(train, dtype=bool)
    result = metrics.frequency_baseline(train, ones, test, ones)
    # always predicting label 0 (frequency 0.75) gives training F1 6/9, better than adding
    # label 1 (8/13) or all three (10/22); on test: tp 3, fp 1, fn 3 -> F1 6/10
    assert result["f1_micro"] == pytest.approx(6 / 10)
    # constant scores: each label's AP is its test prevalence
    assert result["map"] == pytest.approx(np.mean([3 / 4, 1 / 4, 2 / 4]))


def test_balanced_accuracy_matches_sklearn_and_ignores_the_negatives_inflation():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(3)
    y = (rng.random((200, 4)) < [0.5, 0.1, 0.02, 0.3]).astype(int)
    pred = (rng.random((200, 4)) < 0.2).astype(int)
    mask = rng.random((200, 4)) > 0.1
    ours = metrics.balanced_accuracy(y, pred, mask)
    for j in range(4):
        m = mask[:, j]
        assert ours[j] == pytest.approx(balanced_accuracy_score(y[m, j], pred[m, j]))
    never = np.zeros_like(y)  # predicting "absent" everywhere: high accuracy, 0.5 balanced
    assert np.allclose(metrics.balanced_accuracy(y, never, mask), 0.5)
    assert metrics.label_accuracy(y, never, mask)[2] > 0.95
    summary = metrics.summary(y, never.astype(float), mask)
    assert summary["balanced_accuracy_mean"] == pytest.approx(0.5)
    assert summary["accuracy_mean"] == pytest.approx(metrics.label_accuracy(y, never, mask).mean())
    one_class = np.zeros((5, 1), dtype=int)
    assert np.isnan(metrics.balanced_accuracy(one_class, one_class)[0])


def test_frequency_baseline_accuracy_is_the_majority_class_per_label():
    train_y = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
    test_y = np.array([[1, 1], [0, 0], [0, 0], [1, 0]])
    ones = np.ones_like(train_y, dtype=bool)
    result = metrics.frequency_baseline(train_y, ones, test_y, ones)
    # majority: label 0 present (3/4), label 1 absent: correct 2/4 and 3/4
    assert result["accuracy_mean"] == pytest.approx((0.5 + 0.75) / 2)
