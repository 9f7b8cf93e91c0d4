"""The real Clothing Attribute archive: counts, then the pipeline at a small image size.

Runs only when asked (``pytest -m realdata``) and when ../shared/data holds the archive.
"""

import json

import pytest
from conftest import REAL_ARCHIVE, run, set_params

from fashiondvc.dataset import COLOURS, ingest, read_ingested

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason=f"{REAL_ARCHIVE} not present"),
]

#: NaN counts and value counts from ../shared/data/README.md.
EXPECTED_MISSING = {**dict.fromkeys(COLOURS, 112), "pattern_solid": 363, "collar": 394,
                    "sleevelength": 75, "neckline": 542, "category": 752}
EXPECTED_COUNTS = {
    "black": [1124, 620], "white": [1278, 466], "gray": [1399, 345], "yellow": [1677, 67],
    "pattern_solid": [441, 1052], "collar": [567, 895], "sleevelength": [188, 323, 1270],
    "neckline": [626, 465, 223], "category": [134, 88, 108, 220, 232, 62, 260],
}


def test_ingest_reports_the_documented_counts(tmp_path):
    report = ingest(REAL_ARCHIVE, tmp_path / "ingested")
    assert report.n_images == 1856
    assert report.n_attributes == 26
    for name, missing in EXPECTED_MISSING.items():
        assert report.missing[name] == missing, name
    table = read_ingested(tmp_path / "ingested")
    for name, counts in EXPECTED_COUNTS.items():
        assert table[name].value_counts().sort_index().tolist() == counts, name
    colours = table[list(COLOURS)].isna()
    assert colours.all(axis=1).sum() == 112  # the same 112 images miss all 11 colours
    binary_complete = table.drop(columns=["image_id", "sleevelength", "neckline", "category"])
    assert binary_complete.notna().all(axis=1).sum() == 683


def test_pipeline_runs_on_the_real_archive(pipeline_repo):
    set_params(pipeline_repo / "params.yaml", {
        "data.archive": str(REAL_ARCHIVE), "labels": "attrs20", "augment.copies": 1,
        "augment.image_size": 32, "augment.workers": 0, "train.epochs": 2})
    run(["dvc", "repro"], pipeline_repo, timeout=1200)
    metrics = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_test"] == 1856 * 2
    assert 0.30 < metrics["n_test"] / (1856 * 2) < 0.36
    assert 0 <= metrics["f1_micro"] <= 1
    print(json.dumps(metrics, indent=2))
