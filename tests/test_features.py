"""The feature extractor: named features, stored as they are computed, and the same object at
featurize, index, one-off query and in the logged MLflow model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fashiondvc.config import ExtractorConfig
from fashiondvc.errors import FashionError
from fashiondvc.features import (
    COLOUR_GRID,
    FEATURE_KINDS,
    FeatureExtractor,
    StoredFeatures,
    colour_histograms,
    feature_file,
)
from fashiondvc.params import Params, override
from fashiondvc.pipeline import Pipeline

PROJECT = Path(__file__).resolve().parents[1]


def make_params(archive: Path, **overrides) -> Params:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    settings = {"data.archive": str(archive), "labels": "colors11", "lr": 0.003,
                "model.weights": "random", "model.hidden": 16, "augment.copies": 1,
                "augment.image_size": 64, "augment.workers": 1, "featurize.workers": 0,
                "featurize.batch_size": 16, "featurize.precision": "fp32", "train.epochs": 2,
                "train.batch_size": 16, "train.precision": "fp32", **overrides}
    return Params.from_mapping(override(raw, settings))


def test_colour_histograms_count_each_cells_pixels_by_hsv_bin():
    image = np.zeros((1, 8, 6, 3), dtype=np.uint8)
    image[0, :, :] = (255, 0, 0)       # pure red: hue 0, saturation 255, value 255
    image[0, :2, :2] = (0, 0, 0)      # the top-left cell black: hue 0, saturation 0, value 0
    hist = colour_histograms(image).reshape(COLOUR_GRID[0] * COLOUR_GRID[1], 256)
    red_bin = (0 * 4 + 3) * 4 + 3     # hue bin 0, saturation bin 3, value bin 3
    assert hist.shape == (12, 256)
    assert hist[0, 0] == pytest.approx(1.0)          # sqrt(share 1.0) of black
    assert hist[0, red_bin] == 0
    for cell in range(1, 12):
        assert hist[cell, red_bin] == pytest.approx(1.0)
        assert hist[cell].sum() == pytest.approx(1.0)  # one bin holds every pixel


@pytest.mark.parametrize(("backbone", "frozen", "trunk", "side"), [
    # VGG-16 at 64 px: conv5_2 (512 channels, 4x4); taps pool1..pool4: 2 x 960
    ("vgg16", {"model.frozen_convs": 12}, (512, 4, 4), (1920,)),
    # ResNet-50, stem + layer1..layer3 frozen: layer3 (1024 channels, /16); taps stem, layer1,
    # layer2 (64 + 256 + 512 channels)
    ("resnet50", {"model.frozen_stages": 4}, (1024, 4, 4), (1664,)),
    # ConvNeXt-T, stem + stages 1..3 frozen: stage3 (384 channels, /16); taps stage1, stage2
    ("convnext_tiny", {"model.frozen_stages": 4}, (384, 4, 4), (576,)),
])
def test_each_backbone_runs_end_to_end_on_the_sample(tmp_path, sample_zip, backbone, frozen,
                                                     trunk, side):
    params = make_params(sample_zip, **{"model.backbone": backbone, **frozen,
                                        "model.head": "multiscale",
                                        "model.inputs": ["trunk", "side", "colour"]})
    pipeline = Pipeline(params, tmp_path)
    results = pipeline.run()
    meta = json.loads((pipeline.features / "meta.json").read_text())
    assert meta["extractor"]["backbone"] == backbone
    assert tuple(meta["features"]["trunk"]["shape"]) == trunk
    assert tuple(meta["features"]["side"]["shape"]) == side
    assert tuple(meta["features"]["colour"]["shape"]) == (12 * 256,)
    assert np.isfinite(results["evaluate"]["map"])
    index, counts = results["index"]
    assert len(index) == 24 and counts["reused"] == 24
    history = pd.read_csv(pipeline.history)
    assert list(history["epoch"]) == [1, 2] and history["train_loss"].notna().all()


def test_stored_features_say_their_shapes_and_train_reads_them(tmp_path, sample_zip):
    params = make_params(sample_zip, **{"model.inputs": ["trunk", "colour"]})
    pipeline = Pipeline(params, tmp_path)
    pipeline.run(until="train")
    stored = StoredFeatures(pipeline.features)
    from fashiondvc.net import load_net

    _, config = load_net(pipeline.model)
    assert config.input_shapes == {"trunk": stored.shapes["trunk"],
                                   "colour": stored.shapes["colour"]}
    assert config.extractor == stored.config
    # features of another extractor than the model's are refused, not silently scored
    from fashiondvc.rows import load_splits

    meta = json.loads((pipeline.features / "meta.json").read_text())
    meta["extractor"]["precision"] = "bf16"
    (pipeline.features / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FashionError, match=r"made by .*precision='bf16'.* but the model takes "
                                           r"features of .*precision='fp32'"):
        load_splits(pipeline.labels_csv, pipeline.split_csv, pipeline.features, config.labels,
                    config.inputs, extractor=config.extractor)
    # a truncated array (partial dvc pull, full disk) is one clear error, not numpy's
    path = pipeline.features / "trunk.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FashionError, match=r"trunk\.npy: truncated \(\d+ of \d+ bytes\); rerun the "
                                           r"featurize stage"):
        stored.array("trunk")


def test_extractor_outputs_are_the_stored_dtypes_and_shapes():
    extractor = FeatureExtractor(ExtractorConfig("vgg16", "random", 13, 64, "bf16"))
    out = extractor(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert set(out) == set(FEATURE_KINDS)
    assert out["trunk"].dtype == torch.float16 and out["trunk"].shape == (2, 512, 2, 2)
    assert out["side"].dtype == torch.float32 and out["colour"].dtype == torch.float32
    assert extractor.shapes() == {"trunk": (512, 2, 2), "side": (1920,), "colour": (3072,)}


def test_a_photo_gets_identical_features_at_featurize_index_query_and_in_the_pyfunc_model(
        reference, tmp_path, monkeypatch, capsys):
    import mlflow.pyfunc

    from fashiondvc.cli import main
    from fashiondvc.index import build_index
    from fashiondvc.preprocess import load_rgb

    split = pd.read_csv(reference / "data" / "split.csv").sort_values("index")
    row = split[split["copy"] == 0].iloc[0]
    photo = reference / "data" / "ingested" / "images" / f"{int(row['image_id']):06d}.jpg"
    stored = StoredFeatures(reference / "data" / "features")
    expected = {name: torch.from_numpy(np.array(stored.array(name)[int(row["index"])]))
                for name in FEATURE_KINDS}

    seen = []
    original = FeatureExtractor.__call__

    def spy(self, images):
        out = original(self, images)
        seen.append({name: value[0] for name, value in out.items()})
        return out

    monkeypatch.setattr(FeatureExtractor, "__call__", spy)
    model = reference / "models" / "net.pt"
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo, folder / "query.jpg")
    build_index(model, folder, tmp_path / "index")                          # index stage
    main(["search", str(photo), "--json", "--index", str(reference / "data" / "index"),
          "--model", str(model)])                                            # one-off query
    capsys.readouterr()
    assert len(seen) == 2
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{reference / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model("models:/fashiondvc-attributes/1")  # logged model
    served = pyfunc.unwrap_python_model().predictor.extractor
    table = pyfunc.predict(pd.DataFrame({"photo": [photo.read_bytes()]}))
    seen.append({name: value[0] for name, value in
                 served.photos([load_rgb(photo.read_bytes(), photo.name)]).items()})
    for entry in seen:
        for name in FEATURE_KINDS:
            assert torch.equal(entry[name], expected[name]), name
    assert table.shape == (1, 12) and table["error"].isna().all()  # 11 colours + error


def test_mirrored_features_are_those_of_each_image_flipped_left_to_right(tmp_path):
    from fashiondvc.features import StoredFeatures, featurize

    rng = np.random.default_rng(0)
    store = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    extractor = FeatureExtractor(ExtractorConfig("vgg16", "random", 10, 32, "fp32"))
    # one batch, as the direct calls below (batching can change a conv's last bits)
    meta = featurize(store, extractor, tmp_path / "f", batch_size=8, workers=0, mirror=True)
    stored = StoredFeatures(tmp_path / "f")
    assert meta["mirror"] and stored.mirror
    flipped = extractor(torch.from_numpy(np.stack([image[:, ::-1] for image in store])))
    upright = extractor(torch.from_numpy(np.stack(store)))
    for name in ("trunk", "side", "colour"):
        assert np.array_equal(stored.array(name, mirror=True), flipped[name].numpy())
        assert np.array_equal(stored.array(name), upright[name].numpy())
        assert not np.array_equal(stored.array(name, mirror=True), stored.array(name))
    photos = [Image.fromarray(image) for image in store[:2]]
    assert torch.equal(extractor.photos(photos, mirror=True)["colour"],
                       extractor(extractor_inputs(photos).flip(2))["colour"])
    featurize(store, extractor, tmp_path / "plain", batch_size=2, workers=0)
    with pytest.raises(FashionError, match="no mirrored features; set featurize.mirror"):
        StoredFeatures(tmp_path / "plain").array("trunk", mirror=True)


def extractor_inputs(photos) -> torch.Tensor:
    from fashiondvc.preprocess import model_input

    return torch.from_numpy(np.stack([model_input(photo, 32) for photo in photos]))


def stored_folder(folder: Path, n: int = 6, mirror: bool = False) -> Path:
    """A features folder as featurize writes it: trunk (float16) and colour, meta.json."""
    folder.mkdir()
    arrays = {"trunk": np.ones((n, 8, 2, 2), np.float16), "colour": np.ones((n, 5), np.float32)}
    for name, array in arrays.items():
        np.save(folder / feature_file(name), array)
    meta = {"n_images": n, "mirror": mirror,
            "extractor": {"backbone": "vgg16", "weights": "random", "frozen": 13,
                          "image_size": 32, "precision": "fp32"},
            "features": {name: {"shape": list(a.shape[1:]), "dtype": a.dtype.name}
                         for name, a in arrays.items()}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("damage, expected", [
    ("empty", "empty file"),
    ("header cut", "not a whole .npy file"),
    ("not npy", "not a whole .npy file"),
    ("truncated rows", r"truncated \(\d+ of \d+ bytes\)"),
    ("one byte short", r"truncated \(\d+ of \d+ bytes\)"),
    ("other dtype", "float64 array of shape .* meta.json says float16"),
    ("other shape", r"float16 array of shape \(5, 8, 2, 2\), meta.json says float16 of "
                    r"\(6, 8, 2, 2\)"),
    ("object array", "not an array written by featurize"),
])
def test_a_damaged_feature_file_is_one_line_naming_it(tmp_path, damage, expected):
    """What a partial ``dvc pull`` or a full disk leaves, and files of another kind: numpy's
    "mmap length is greater than file size" (a ValueError) or EOFError never reaches the user,
    and a file of another dtype or shape than meta.json says is refused, not read."""
    folder = stored_folder(tmp_path / "features")
    path = folder / "trunk.npy"
    data = path.read_bytes()
    if damage == "other dtype":
        np.save(path, np.ones((6, 8, 2, 2), np.float64))
    elif damage == "other shape":
        np.save(path, np.ones((5, 8, 2, 2), np.float16))
    elif damage == "object array":
        np.save(path, np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    else:
        path.write_bytes({"empty": b"", "header cut": data[:30],
                          "not npy": b"\x89PNG\r\n\x1a\n" + bytes(500),
                          "truncated rows": data[:len(data) // 2],
                          "one byte short": data[:-1]}[damage])
    with pytest.raises(FashionError, match=rf"trunk\.npy: {expected}.*rerun the featurize"):
        StoredFeatures(folder).array("trunk")
    assert StoredFeatures(folder).array("colour").shape == (6, 5)  # the others still read


@pytest.mark.parametrize("damage", ["not json", "no n_images", "shape not a list", "missing"])
def test_damaged_features_metadata_is_one_line(tmp_path, damage):
    folder = stored_folder(tmp_path / "features")
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    if damage == "not json":
        meta_path.write_text(meta_path.read_text()[:40])
    elif damage == "no n_images":
        del meta["n_images"]
        meta_path.write_text(json.dumps(meta))
    elif damage == "shape not a list":
        meta["features"]["trunk"]["shape"] = 7
        meta_path.write_text(json.dumps(meta))
    else:
        meta_path.unlink()
    with pytest.raises(FashionError, match=r"meta\.json.*(unreadable features metadata.*rerun "
                                           r"the featurize stage|does not exist)"):
        StoredFeatures(folder)


def test_missing_feature_files_are_one_line(tmp_path):
    folder = stored_folder(tmp_path / "features", mirror=True)
    with pytest.raises(FashionError, match=r"trunk\.mirror\.npy does not exist: rerun"):
        StoredFeatures(folder).array("trunk", mirror=True)
    (folder / "colour.npy").unlink()
    with pytest.raises(FashionError, match=r"colour\.npy does not exist: rerun"):
        StoredFeatures(folder).array("colour")
