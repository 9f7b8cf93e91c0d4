"""Same parameters and data, same bytes: two fresh repos, and augment across worker counts."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import run
from faultkit import (
    REFERENCE_PARAMS,
    make_repo,
    reference_archive,
    results,
    run_stage,
    workdir,
)

from fashiondvc.augment import augment_folder

#: Stages whose every output must match byte for byte.
STAGES = ("ingest", "augment", "split", "featurize", "train")


def outs(repo) -> dict[str, str]:
    """Hash of every output of `STAGES`, from dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in STAGES
            for out in lock["stages"][stage].get("outs", [])}


def test_two_fresh_repos_give_identical_bytes(reference, tmp_path, tmp_path_factory):
    repo = make_repo(tmp_path / "repo", reference_archive(tmp_path_factory), **REFERENCE_PARAMS)
    run(["dvc", "repro"], repo)
    assert results(repo) == results(reference)
    # and every intermediate: ingested photos, augmented shards, split, features, weights
    assert outs(repo) == outs(reference)
    assert {"data/ingested", "data/augmented", "data/split.csv", "data/features",
            "models/net.pt"} <= set(outs(repo))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    work = workdir(tmp_path_factory.mktemp("ingested"), reference_archive(tmp_path_factory),
                   **REFERENCE_PARAMS)
    assert run_stage("ingest", "data/ingested", cwd=work).code == 0
    return work / "data" / "ingested"


def store_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_augment_is_byte_identical_for_any_worker_count(ingested, tmp_path):
    ids = pd.read_csv(ingested / "labels.csv")["image_id"]
    stores = []
    for workers in (1, 2, 3):
        out = tmp_path / f"workers-{workers}"
        augment_folder(ingested / "images", ids, out, copies=2, size=48, seed=3,
                       workers=workers)
        stores.append(store_bytes(out))
    assert stores[0] == stores[1] == stores[2]
    assert sorted(stores[0]) == ["index.csv", "shard-00000.bin"]
