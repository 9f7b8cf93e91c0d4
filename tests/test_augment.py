"""Augment counts, sizes, determinism, and the sharded store."""

import numpy as np
import pandas as pd
import pytest

from fashiondvc.augment import augment_folder, augment_ingested
from fashiondvc.dataset import ingest
from fashiondvc.store import ImageStore


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, sample_zip):
    out = tmp_path_factory.mktemp("ingested") / "ingested"
    ingest(sample_zip, out)
    return out


def run_augment(ingested, out, **kwargs):
    ids = pd.read_csv(ingested / "labels.csv")["image_id"][:6]
    options = {"copies": 3, "size": 40, "seed": 1, "workers": 1, **kwargs}
    return augment_folder(ingested / "images", ids, out, **options)


def test_each_photo_gives_original_plus_copies(ingested, tmp_path):
    index = run_augment(ingested, tmp_path / "aug")
    assert len(index) == 6 * 4
    assert index.groupby("image_id")["copy"].apply(list).tolist() == [[0, 1, 2, 3]] * 6
    store = ImageStore(tmp_path / "aug")
    assert len(store) == 24
    assert store[5].shape == (40, 40, 3) and store[5].dtype == np.uint8


def test_augment_is_deterministic_across_worker_counts(ingested, tmp_path):
    run_augment(ingested, tmp_path / "a", workers=1)
    run_augment(ingested, tmp_path / "b", workers=2)
    shards = sorted(p.name for p in (tmp_path / "a").glob("shard-*.bin"))
    assert shards == ["shard-00000.bin"]  # 24 images: one shard
    assert sorted(p.name for p in (tmp_path / "b").glob("shard-*.bin")) == shards
    for name in shards:
        data = (tmp_path / "a" / name).read_bytes()
        assert len(data) > 24 * 100  # 24 JPEGs
        assert data == (tmp_path / "b" / name).read_bytes()


def test_copies_differ_from_the_original_and_seed_matters(ingested, tmp_path):
    run_augment(ingested, tmp_path / "a", seed=1)
    run_augment(ingested, tmp_path / "b", seed=2)
    a, b = ImageStore(tmp_path / "a"), ImageStore(tmp_path / "b")
    assert not np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(a[0], b[0])  # copy 0 is the plain resize
    assert not np.array_equal(a[1], b[1])


def test_augment_stage_takes_every_ingested_photo_with_its_params(ingested, tmp_path):
    """`augment_ingested`, the augment stage: augment_folder over every ingested photo."""
    from fashiondvc.params import AugmentParams

    params = AugmentParams(copies=1, image_size=40, seed=1, workers=1)
    index = augment_ingested(ingested, tmp_path / "stage", params)
    ids = pd.read_csv(ingested / "labels.csv")["image_id"]
    assert len(index) == 2 * len(ids) == len(ImageStore(tmp_path / "stage"))
    assert sorted(set(index["image_id"])) == sorted(ids)
    direct = augment_folder(ingested / "images", ids, tmp_path / "direct", copies=1, size=40,
                            seed=1, workers=1)
    pd.testing.assert_frame_equal(index, direct)
    for name in ("index.csv", "shard-00000.bin"):
        assert (tmp_path / "stage" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
