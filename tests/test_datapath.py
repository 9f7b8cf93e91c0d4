"""The fast data paths: featurize's cast trunk and streamed .npy, FeatureSet in memory or mapped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fashiondvc import backbones
from fashiondvc.config import ExtractorConfig
from fashiondvc.errors import FashionError
from fashiondvc.features import (
    FeatureExtractor,
    NpyWriter,
    StoredFeatures,
    colour_histograms,
    featurize,
    read_rows,
)
from fashiondvc.preprocess import normalize
from fashiondvc.rows import Batch, FeatureSet
from fashiondvc.runtime import autocast, release_free_memory

VGG = backbones.get("vgg16")


def random_images(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_featurize_matches_autocast_reference(tmp_path, precision):
    images = random_images(0, 5)
    frozen = backbones.frozen_part(VGG, "random", 4)
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        reference = frozen(normalize(torch.from_numpy(np.stack(images)))).float().numpy()
    config = ExtractorConfig("vgg16", "random", 4, 32, precision)
    extractor = FeatureExtractor(config, part=frozen, device="cpu")
    out = tmp_path / "features"
    meta = featurize(images, extractor, out, batch_size=2, workers=0)
    stored = np.load(out / "trunk.npy", mmap_mode="r")
    assert stored.shape == reference.shape == (5, *extractor.shapes()["trunk"])
    assert stored.dtype == (np.float32 if precision == "fp32" else np.float16)
    np.testing.assert_allclose(stored.astype(np.float32), reference, rtol=1e-3, atol=1e-3)
    assert sorted(p.name for p in out.iterdir()) == ["colour.npy", "meta.json", "side.npy",
                                                     "trunk.npy"]
    assert not [p for p in tmp_path.iterdir() if p != out]  # written atomically, no leftovers
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["n_images"] == 5 and ExtractorConfig(**meta["extractor"]) == config
    features = StoredFeatures(out)
    assert features.config == config and features.n_images == 5
    for name in ("trunk", "side", "colour"):
        array = features.array(name)
        assert array.shape == (5, *features.shapes[name]) == np.load(out / f"{name}.npy").shape
        assert meta["features"][name]["dtype"] == array.dtype.name
    np.testing.assert_array_equal(features.array("trunk"), stored)


def test_side_and_colour_features(tmp_path):
    """side: average and max of each inner pool; colour: the photos' HSV histograms."""
    images = random_images(2, 3)
    frozen = backbones.frozen_part(VGG, "random", 7)  # conv1_1..conv3_3 + pool3: pools 1-2 inside
    extractor = FeatureExtractor(ExtractorConfig("vgg16", "random", 7, 32, "fp32"), part=frozen)
    featurize(images, extractor, tmp_path / "features", batch_size=2, workers=0)
    side = np.load(tmp_path / "features" / "side.npy")
    assert side.shape == (3, 2 * (64 + 128)) and side.dtype == np.float32
    with torch.inference_mode():  # pool1 is layer 4, pool2 layer 9 of vgg.features
        x = normalize(torch.from_numpy(np.stack(images)))
        pool1 = nn.Sequential(*list(frozen)[:5])(x)
        pool2 = nn.Sequential(*list(frozen)[:10])(x)
    expected = torch.cat([pool1.mean((2, 3)), pool1.amax((2, 3)),
                          pool2.mean((2, 3)), pool2.amax((2, 3))], 1).numpy()
    np.testing.assert_allclose(side, expected, rtol=1e-4, atol=1e-4)
    colour = np.load(tmp_path / "features" / "colour.npy")
    assert colour.dtype == np.float32 and colour.shape == (3, 4 * 3 * 256)
    np.testing.assert_array_equal(colour, colour_histograms(np.stack(images)))
    # each of the 12 cells' squared histogram sums to 1
    np.testing.assert_allclose((colour ** 2).reshape(3, 12, 256).sum(-1), 1, rtol=1e-5)


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
    np.save(tmp_path / "trunk.npy", rng.standard_normal((40, 3, 2, 2)).astype(np.float16))
    np.save(tmp_path / "side.npy", rng.standard_normal((40, 6)).astype(np.float32))
    arrays = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("trunk", "side")}
    targets = (rng.random((40, 4)) < 0.5).astype(np.float32)
    mask = rng.random((40, 4)) < 0.8
    rows = rng.permutation(40)[:25]
    memory = FeatureSet(arrays, rows, targets, mask, in_memory=True)
    mapped = FeatureSet(arrays, rows, targets, mask, in_memory=False)
    assert set(memory.cache) == {"trunk", "side"} and set(mapped.cache) == {"side"}
    batch = [7, 3, 20, 0, 11]
    a, b = memory.__getitems__(batch), mapped.__getitems__(batch)
    assert isinstance(a, Batch) and len(a) == len(b) == len(batch)
    assert set(a.features) == set(b.features) == {"trunk", "side"}
    for name in a.features:
        torch.testing.assert_close(a.features[name], b.features[name], rtol=0, atol=0)
        assert a.features[name].dtype == torch.float32
    torch.testing.assert_close(a.targets, b.targets, rtol=0, atol=0)
    torch.testing.assert_close(a.mask, b.mask, rtol=0, atol=0)
    # a batch holds exactly its rows (in file order), each with its own targets and mask
    order = sorted(batch, key=lambda i: rows[i])
    expected_rows = rows[order]
    np.testing.assert_array_equal(a.features["trunk"].numpy(),
                                  arrays["trunk"][expected_rows].astype(np.float32))
    np.testing.assert_array_equal(a.features["side"].numpy(), arrays["side"][expected_rows])
    np.testing.assert_array_equal(a.targets.numpy(), targets[expected_rows])
    np.testing.assert_array_equal(a.mask.numpy(), mask[expected_rows].astype(np.float32))
    features = arrays["trunk"]
    np.testing.assert_array_equal(read_rows(features, rows).numpy(), np.asarray(features[rows]))
