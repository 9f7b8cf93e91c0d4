"""The int8 frozen trunk: calibration sample, determinism, parity of every query path with the
stored features, fidelity to float, and the fall-back without the optional libraries."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_features import make_params

from fashiondvc import quantize
from fashiondvc.config import ExtractorConfig
from fashiondvc.features import FEATURE_KINDS, INT8_TRUNK, FeatureExtractor, StoredFeatures
from fashiondvc.pipeline import Pipeline

needs_openvino = pytest.mark.skipif(quantize.missing() is not None,
                                    reason="the int8 extra (openvino, nncf) is not installed")


def test_calibration_rows_are_a_fixed_seeded_sample_of_distinct_rows():
    rows = quantize.calibration_rows(1000)
    assert rows == quantize.calibration_rows(1000)  # same store size, same sample
    assert len(rows) == quantize.CALIBRATION_SIZE == len(set(rows))
    assert rows == sorted(rows) and rows[0] >= 0 and rows[-1] < 1000
    assert rows != list(range(quantize.CALIBRATION_SIZE))  # a sample, not the first rows
    assert quantize.calibration_rows(5) == [0, 1, 2, 3, 4]  # a small store: all of it


def test_without_the_libraries_int8_falls_back_to_float_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(quantize, "missing", lambda: "featurize.precision: int8 needs openvino "
                                                     "(pip install 'fashiondvc[int8]')")
    extractor = FeatureExtractor(ExtractorConfig("vgg16", "random", 4, 32, "int8"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'fashiondvc[int8]'" in err
    assert extractor.config.precision in ("bf16", "fp32") and not extractor.int8
    assert err.strip().endswith(f"computing the features in {extractor.config.precision} "
                                "instead")


@pytest.fixture(scope="module")
def int8_run(sample_zip, tmp_path_factory):
    """The generated sample featurized twice in int8 (the second time in another folder) and
    trained once."""
    root = tmp_path_factory.mktemp("int8")
    params = make_params(sample_zip, **{"featurize.precision": "int8", "model.frozen_convs": 13,
                                        "model.inputs": ["trunk", "side", "colour"],
                                        "model.head": "multiscale"})
    pipeline = Pipeline(params, root / "a")
    pipeline.run(until="train")
    again = Pipeline(params, root / "b")
    again.run(until="split")
    again.featurize()
    return pipeline, again


@needs_openvino
def test_int8_features_are_deterministic_and_say_how_they_were_made(int8_run):
    pipeline, again = int8_run
    for name in [f"{kind}.npy" for kind in FEATURE_KINDS] + [f"{INT8_TRUNK}.xml",
                                                              f"{INT8_TRUNK}.bin"]:
        assert (pipeline.features / name).read_bytes() == (again.features / name).read_bytes(), \
            name
    meta = json.loads((pipeline.features / "meta.json").read_text())
    assert meta["extractor"]["precision"] == "int8"
    n = meta["n_images"]
    assert meta["int8"]["calibration_rows"] == quantize.calibration_rows(n)
    assert set(meta["int8"]) >= {"openvino", "nncf"}


@needs_openvino
def test_every_query_path_runs_the_stored_int8_trunk_and_gets_the_stored_features(int8_run):
    from fashiondvc.mlmodel import predictor_from_store
    from fashiondvc.predictor import Predictor
    from fashiondvc.preprocess import load_rgb

    pipeline, _ = int8_run
    stored = StoredFeatures(pipeline.features)
    split = pd.read_csv(pipeline.split_csv).sort_values("index")
    rows = split[split["copy"] == 0].iloc[:3]
    photos = [load_rgb((pipeline.ingested / "images" / f"{int(i):06d}.jpg").read_bytes(), "p")
              for i in rows["image_id"]]
    local = Predictor.from_file(pipeline.model)                  # index stage, search, serve
    logged = predictor_from_store(pipeline.model, {"tta": "none", "embedding": "hidden"})
    for predictor in (local, logged):                            # ... and the MLflow model
        assert predictor.extractor.quantized
        assert predictor.extractor.part.files == stored.int8_files()
        out = predictor.extractor.photos(photos)                 # batch of 3, featurize's of 16
        for name in FEATURE_KINDS:
            expected = torch.from_numpy(np.array(stored.array(name)[rows["index"].to_numpy()]))
            torch.testing.assert_close(out[name], expected, rtol=0, atol=1e-3 * (
                float(expected.float().abs().max()) + 1e-6), msg=name)


@needs_openvino
def test_int8_trunk_stays_close_to_float(int8_run):
    pipeline, _ = int8_run
    stored = StoredFeatures(pipeline.features)
    config = stored.config
    float_ex = FeatureExtractor(ExtractorConfig(config.backbone, config.weights, config.frozen,
                                                config.image_size, "fp32"))
    int8_ex = FeatureExtractor(config, part=quantize.Int8Trunk.from_files(
        **{"xml": stored.int8_files()["xml"], "weights": stored.int8_files()["bin"]}))
    images = torch.from_numpy(np.stack([pipeline_image(pipeline, i) for i in range(8)]))
    a, b = float_ex(images), int8_ex(images)
    pooled_a, pooled_b = a["trunk"].float().mean((2, 3)), b["trunk"].float().mean((2, 3))
    cosine = torch.nn.functional.cosine_similarity(pooled_a, pooled_b)
    assert cosine.min() > 0.99, cosine        # random weights: looser than real ones' 0.999
    assert not torch.equal(a["trunk"], b["trunk"])  # really another computation


def pipeline_image(pipeline, i):
    from fashiondvc.store import ImageStore

    return ImageStore(pipeline.augmented)[i]


@needs_openvino
def test_an_int8_model_without_its_trunk_is_refused(int8_run, tmp_path):
    from fashiondvc.errors import FashionError
    from fashiondvc.net import load_net

    pipeline, _ = int8_run
    saved = torch.load(pipeline.model, weights_only=True)
    del saved["int8_trunk"]
    torch.save(saved, tmp_path / "net.pt")
    with pytest.raises(FashionError, match="int8 model without its int8 trunk; rerun train"):
        load_net(tmp_path / "net.pt")


@pytest.mark.realdata
@needs_openvino
def test_the_real_trunk_in_int8_keeps_pooled_features_within_the_issues_cosine():
    """Issue 22's fidelity goal on real photos and the real ImageNet trunk: the globally pooled
    conv5_3 and the side features keep a cosine of at least 0.999 to fp32."""
    import zipfile

    from conftest import REAL_ARCHIVE, REAL_WEIGHTS

    from fashiondvc.preprocess import load_rgb, model_input

    if not (REAL_ARCHIVE.exists() and REAL_WEIGHTS.exists()):
        pytest.skip("../shared archive or weights not present")
    with zipfile.ZipFile(REAL_ARCHIVE) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[::40][:44]
        images = np.stack([model_input(load_rgb(archive.read(n), n), 224) for n in names])
    config = ExtractorConfig("vgg16", str(REAL_WEIGHTS), 13, 224, "int8")
    int8 = FeatureExtractor(config)
    int8.quantize(list(images[:32]))                  # calibrated on 32, checked on 12 others
    fp32 = FeatureExtractor(ExtractorConfig("vgg16", str(REAL_WEIGHTS), 13, 224, "fp32"))
    test = torch.from_numpy(images[32:])
    a, b = fp32(test), int8(test)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(a["trunk"].float().mean((2, 3)), b["trunk"].float().mean((2, 3))).min() >= 0.999
    assert cosine(a["side"], b["side"]).min() >= 0.999
