"""`dvc repro` reruns exactly what a changed input affects (issue: stale results).

Inputs that are paths in params.yaml (the archive, a weights file, a photo folder) are compared
by content through the ``inputs`` stage; a queued or ``--temp`` experiment finds a git-ignored
archive through ``DVC_ROOT``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_repo, run
from torchvision.models import vgg16

from fashiondvc.sample import make_sample_archive

pytestmark = pytest.mark.slow


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")}


def n_images(repo: Path) -> int:
    metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
    return metrics["n_train"] + metrics["n_test"]


def test_archive_replaced_in_place_is_ingested_again(tmp_path):
    archive = tmp_path / "repo" / "data" / "raw" / "ClothingAttributeDataset.zip"
    repo = make_repo(tmp_path / "repo", Path("data/raw/ClothingAttributeDataset.zip"))
    make_sample_archive(archive, n_images=20, seed=1)
    run(["dvc", "repro", "evaluate"], repo)
    assert n_images(repo) == 20 * 2

    archive.touch()  # same bytes: nothing to redo
    assert ran(run(["dvc", "repro", "evaluate"], repo).stdout) == {"inputs"}

    make_sample_archive(archive, n_images=28, seed=1)  # copied over the old one
    second = run(["dvc", "repro", "evaluate"], repo)
    assert {"ingest", "augment", "split", "featurize", "train", "evaluate"} <= ran(second.stdout)
    assert n_images(repo) == 28 * 2


def _weights_file(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save({k: v for k, v in vgg16(weights=None).state_dict().items()
                if k.startswith("features.")}, path)


def test_weights_file_replaced_in_place_reruns_featurize(tmp_path, sample_zip):
    weights = tmp_path / "vgg.pth"
    _weights_file(weights, seed=1)
    repo = make_repo(tmp_path / "repo", sample_zip, **{"model.weights": str(weights)})
    run(["dvc", "repro", "evaluate"], repo)
    before = (repo / "metrics" / "metrics.json").read_text()

    _weights_file(weights, seed=2)
    second = ran(run(["dvc", "repro", "evaluate"], repo).stdout)
    assert {"featurize", "train", "evaluate"} <= second
    assert not {"ingest", "augment", "split"} & second
    assert (repo / "metrics" / "metrics.json").read_text() != before


def test_photos_added_to_search_images_rebuild_the_index(tmp_path, sample_zip):
    photos = tmp_path / "photos"
    photos.mkdir()
    reader = make_sample_archive(tmp_path / "extra", n_images=6, folder=True)
    images = sorted(Path(reader).rglob("*.jpg"))
    for image in images[:4]:
        shutil.copy(image, photos / image.name)
    repo = make_repo(tmp_path / "repo", sample_zip, **{"search.images": str(photos)})
    run(["dvc", "repro"], repo)
    meta = json.loads((repo / "data" / "index" / "meta.json").read_text())
    assert meta["n_images"] == 4

    shutil.copy(images[4], photos / images[4].name)
    second = ran(run(["dvc", "repro"], repo).stdout)
    assert second == {"inputs", "index"}
    assert json.loads((repo / "data" / "index" / "meta.json").read_text())["n_images"] == 5


def test_temp_experiment_finds_the_git_ignored_archive_offline(tmp_path, sample_zip):
    repo = make_repo(tmp_path / "repo", Path("data/raw/ClothingAttributeDataset.zip"),
                     **{"data.url": "http://127.0.0.1:9/unreachable.zip"})
    archive = repo / "data" / "raw" / "ClothingAttributeDataset.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_zip, archive)
    assert run(["git", "check-ignore", "-q", str(archive)], repo, check=False).returncode == 0
    result = run(["dvc", "exp", "run", "--temp", "-n", "t1", "evaluate"], repo)
    assert "downloading" not in result.stdout + result.stderr
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "t1" in shown
