"""Grouped and per-image train/test splits."""

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT, set_params

from fashiondvc.errors import FashionError
from fashiondvc.params import SplitParams, load_params, validate
from fashiondvc.split import split_index, split_test_mask

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


@pytest.mark.parametrize("test_size", [0, 1, -0.1, 1.5, "half", None])
def test_test_size_must_be_a_fraction(test_size):
    """Checked once, in params (split_test_mask trusts its input): one line naming it."""
    params = copy.deepcopy(dict(load_params(PROJECT / "params.yaml").raw))
    params["split"] = {**params["split"], "test_size": test_size}
    with pytest.raises(FashionError) as error:
        validate(params)
    message = str(error.value)
    assert message.startswith("split.test_size: ") and "\n" not in message
    assert repr(test_size) in message or str(test_size) in message


def test_load_params_refuses_a_test_size_outside_0_1(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((PROJECT / "params.yaml").read_text())
    set_params(params_file, {"split.test_size": 1.5})
    with pytest.raises(FashionError, match=r"^split\.test_size: must be in \(0, 1\), got 1\.5$"):
        load_params(params_file)
    set_params(params_file, {"split.test_size": 0.5})
    assert load_params(params_file).split.test_size == 0.5


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


def test_split_stage_writes_every_image_once_with_its_subset(tmp_path):
    """`split_index`, the split stage: the store's index -> split.csv, and the counts."""
    index = pd.DataFrame({"index": np.arange(len(SOURCES)), "image_id": SOURCES,
                          "copy": np.tile(np.arange(11), 30), "shard": 0,
                          "offset": np.arange(len(SOURCES)) * 10, "length": 10})
    index.to_csv(tmp_path / "index.csv", index=False)
    params = SplitParams(test_size=0.33, val_size=0.0, group_by_source=True, seed=0)
    counts = split_index(tmp_path / "index.csv", tmp_path / "split.csv", params)
    split = pd.read_csv(tmp_path / "split.csv")
    assert list(split.columns) == ["index", "image_id", "copy", "subset"]
    assert split["index"].tolist() == index["index"].tolist()
    expected = split_test_mask(SOURCES, params.test_size,
                               group_by_source=params.group_by_source, seed=params.seed)
    np.testing.assert_array_equal(split["subset"].to_numpy() == "test", expected)
    assert counts == {"train": int((~expected).sum()), "val": 0, "test": int(expected.sum())}
