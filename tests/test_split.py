"""Grouped and per-image train/test splits."""

import numpy as np
import pytest

from fashiondvc.errors import FashionError
from fashiondvc.split import split_test_mask

SOURCES = np.repeat(np.arange(1, 31), 11)


def test_grouped_split_keeps_each_photo_on_one_side():
    is_test = split_test_mask(SOURCES, 0.33, group_by_source=True, seed=0)
    test_photos, train_photos = set(SOURCES[is_test]), set(SOURCES[~is_test])
    assert not test_photos & train_photos
    assert len(test_photos) == 10  # ceil(0.33 * 30)


def test_per_image_split_leaks_photos():
    is_test = split_test_mask(SOURCES, 0.33, group_by_source=False, seed=0)
    assert abs(is_test.mean() - 0.33) < 0.01
    assert set(SOURCES[is_test]) & set(SOURCES[~is_test])


def test_split_is_seeded():
    a = split_test_mask(SOURCES, 0.33, seed=1)
    assert np.array_equal(a, split_test_mask(SOURCES, 0.33, seed=1))
    assert not np.array_equal(a, split_test_mask(SOURCES, 0.33, seed=2))


@pytest.mark.parametrize("test_size", [0, 1, -0.1, 1.5])
def test_test_size_must_be_a_fraction(test_size):
    with pytest.raises(FashionError, match="split.test_size"):
        split_test_mask(SOURCES, test_size)


def test_validation_photos_come_from_training_photos_and_leave_test_unchanged():
    from fashiondvc.split import assign_subsets

    ids = np.repeat(np.arange(1, 101), 3)  # 100 photos, 3 images each
    plain = assign_subsets(ids, 0.3, seed=4)
    with_val = assign_subsets(ids, 0.3, val_size=0.2, seed=4)
    np.testing.assert_array_equal(plain == "test", with_val == "test")
    assert set(plain) == {"train", "test"}
    assert len(np.unique(ids[with_val == "val"])) == 20
    for photo in np.unique(ids):  # every photo on exactly one side
        assert len(set(with_val[ids == photo])) == 1
    # grouped validation even with the paper's per-image test split
    leaky = assign_subsets(ids, 0.3, val_size=0.2, group_by_source=False, seed=4)
    val_photos = np.unique(ids[leaky == "val"])
    assert not np.isin(ids[leaky == "train"], val_photos).any()
