"""Label parsing, NaN masking, label sets and ingest on the generated archive."""

import io

import numpy as np
import pandas as pd
import pytest
import scipy.io

from fashiondvc.dataset import ArchiveReader, ingest, parse_label_file, read_labels
from fashiondvc.errors import FashionError
from fashiondvc.labels import (
    ATTRIBUTES,
    BINARY_ATTRIBUTES,
    COLOURS,
    LABEL_SETS,
    binary_targets,
    resolve_label_set,
)
from fashiondvc.sample import make_sample_archive


def mat_bytes(values) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"GT": np.asarray(values, dtype=float).reshape(-1, 1)})
    return buffer.getvalue()


def test_parse_label_file_keeps_nan_as_missing():
    values = parse_label_file(mat_bytes([1, 2, np.nan, 2]), "red")
    assert np.isnan(values[2])
    assert values[[0, 1, 3]].tolist() == [1, 2, 2]


def test_parse_label_file_checks_range_per_attribute():
    assert parse_label_file(mat_bytes([1, 7, 3]), "category").tolist() == [1, 7, 3]
    with pytest.raises(FashionError, match="labels/red_GT.mat: value 3 outside 1..2"):
        parse_label_file(mat_bytes([1, 3]), "red")


def test_read_labels_keys_files_by_name_not_listing_order(sample_zip):
    with ArchiveReader(sample_zip) as reader:
        table = read_labels(reader)
        raw = scipy.io.loadmat(io.BytesIO(reader.read("labels/blue_GT.mat")))["GT"].ravel()
    assert list(table.columns) == ["image_id", *ATTRIBUTES]
    assert table["image_id"].tolist() == list(range(1, 25))
    np.testing.assert_array_equal(table["blue"].to_numpy(), raw)


def test_binary_targets_mask_missing_labels():
    table = pd.DataFrame({"red": [1.0, 2.0, np.nan], "blue": [2.0, np.nan, 1.0]})
    targets, mask = binary_targets(table, ["red", "blue"])
    assert targets.tolist() == [[0, 1], [1, 0], [0, 0]]
    assert mask.tolist() == [[True, True], [True, False], [False, True]]


def test_label_sets():
    assert resolve_label_set("colors11") == list(COLOURS)
    assert len(resolve_label_set("attrs20")) == 20
    assert not {"gender", "skin_exposure", "placket"} & set(LABEL_SETS["attrs20"])
    assert resolve_label_set("binary23") == list(BINARY_ATTRIBUTES)
    assert resolve_label_set(["red", "necktie"]) == ["red", "necktie"]
    assert resolve_label_set("red") == ["red"]


@pytest.mark.parametrize("labels, message", [
    ([], "empty"), (["violet"], "unknown label 'violet'"), ("category", "multi-class"),
    (["red", "red"], "duplicate"),
])
def test_label_set_errors(labels, message):
    with pytest.raises(FashionError, match=message):
        resolve_label_set(labels)


@pytest.mark.parametrize("as_folder", [False, True])
def test_ingest_zip_or_folder(tmp_path, as_folder):
    source = make_sample_archive(tmp_path / "archive", n_images=10, seed=3, folder=as_folder)
    report = ingest(source, tmp_path / "out")
    labels = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert report.n_images == 10 and report.n_attributes == 26
    assert len(labels) == 10
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        f"{i:06d}.jpg" for i in range(1, 11)]
    assert report.missing["red"] == int(labels["red"].isna().sum())
