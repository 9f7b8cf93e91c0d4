"""The fast data paths: featurize's cast trunk and streamed .npy, FeatureSet in memory or mapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashiondvc.errors import FashionError
from fashiondvc.features import NpyWriter, featurize, load_features, read_rows
from fashiondvc.preprocess import normalize
from fashiondvc.runtime import autocast, release_free_memory
from fashiondvc.train import FeatureSet
from fashiondvc.trunk import feature_shape, load_vgg16, split_vgg


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_featurize_matches_autocast_reference(tmp_path, precision):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    frozen, _ = split_vgg(load_vgg16("random"), 4)
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        reference = frozen(normalize(torch.from_numpy(np.stack(images)))).float().numpy()
    out = featurize(images, frozen, tmp_path, feature_shape=feature_shape(4, 32),
                    batch_size=2, workers=0, precision=precision, device="cpu")
    stored = np.load(out / "features.npy", mmap_mode="r")
    assert stored.shape == reference.shape
    assert stored.dtype == (np.float32 if precision == "fp32" else np.float16)
    np.testing.assert_allclose(stored.astype(np.float32), reference, rtol=1e-3, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "side.npy"]


def test_side_features_are_average_and_max_of_each_inner_pool(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    frozen, _ = split_vgg(load_vgg16("random"), 7)  # conv1_1..conv3_3 + pool3: pools 1-2 inside
    featurize(images, frozen, tmp_path, feature_shape=feature_shape(7, 32), batch_size=2,
              workers=0, precision="fp32", device="cpu")
    side = np.load(tmp_path / "side.npy")
    assert side.shape == (3, 2 * (64 + 128)) and side.dtype == np.float32
    with torch.inference_mode():  # pool1 is layer 4, pool2 layer 9 of vgg.features
        x = normalize(torch.from_numpy(np.stack(images)))
        pool1 = frozen[:5](x)
        pool2 = frozen[:10](x)
    expected = torch.cat([pool1.mean((2, 3)), pool1.amax((2, 3)),
                          pool2.mean((2, 3)), pool2.amax((2, 3))], 1).numpy()
    np.testing.assert_allclose(side, expected, rtol=1e-4, atol=1e-4)


def test_npy_writer_refuses_short_or_misshapen_output(tmp_path):
    writer = NpyWriter(tmp_path / "a.npy", np.float16, (3, 2))
    writer.append(np.ones((2, 2)))
    with pytest.raises(FashionError):
        writer.append(np.ones((1, 3)))
    with pytest.raises(FashionError):
        writer.close()
    release_free_memory()  # a no-op where there is no glibc; must never raise


def test_feature_set_in_memory_and_mapped_give_the_same_batches(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "f.npy", rng.standard_normal((40, 3, 2, 2)).astype(np.float16))
    features = load_features(tmp_path / "f.npy")
    targets = (rng.random((40, 4)) < 0.5).astype(np.float32)
    mask = np.ones_like(targets)
    rows = rng.permutation(40)[:25]
    memory = FeatureSet(features, rows, targets, mask, in_memory=True)
    mapped = FeatureSet(features, rows, targets, mask, in_memory=False)
    assert memory.cache is not None and mapped.cache is None
    batch = [7, 3, 20, 0, 11]
    for a, b in zip(memory.__getitems__(batch), mapped.__getitems__(batch), strict=True):
        torch.testing.assert_close(a, b)
    np.testing.assert_array_equal(read_rows(features, rows).numpy(), np.asarray(features[rows]))
