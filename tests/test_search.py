"""The search engine: index building (and reuse), ranking, filters, the CLI and the DVC stage."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run, set_params
from PIL import Image
from searchkit import LABELS, N_PHOTOS, make_collection, save_tiny_net

from fashiondvc.cli import main
from fashiondvc.errors import FashionError
from fashiondvc.index import SearchIndex, build_index
from fashiondvc.search import Searcher, parse_where, rank


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("search"), split_label="red")


@pytest.fixture(scope="module")
def searcher(collection):
    return Searcher.open(collection.index_dir, collection.model)


def png_bytes(path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_index_holds_every_photo_with_unit_embeddings(collection):
    index = collection.index
    assert len(index) == N_PHOTOS
    assert index.paths == [f"{i:06d}.jpg" for i in range(1, N_PHOTOS + 1)]
    assert index.probs.shape == (N_PHOTOS, len(LABELS))
    assert ((index.probs > 0) & (index.probs < 1)).all()
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)
    assert index.file(0) == (collection.images / "000001.jpg").resolve()
    for name in ("index.npz", "paths.csv", "meta.json"):
        assert (collection.index_dir / name).exists()
    assert not list(collection.index_dir.parent.glob(".index.tmp-*"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_index_from_stored_features_equals_the_trunk_pass_over_the_photos(tmp_path, precision):
    # two independent paths: ingest -> augment -> store -> featurize (what training sees,
    # copy 0) and the model's predictor, run over the photo files
    from faultkit import workdir

    from fashiondvc.features import StoredFeatures
    from fashiondvc.index import build_index_from_features
    from fashiondvc.net import load_net
    from fashiondvc.params import load_params
    from fashiondvc.pipeline import Pipeline
    from fashiondvc.sample import make_sample_archive

    archive = make_sample_archive(tmp_path / "s.zip", n_images=10)
    folder = workdir(tmp_path / "work", archive, **{"featurize.precision": precision,
                                                   "featurize.batch_size": 4})
    pipeline = Pipeline(load_params(folder / "params.yaml"), folder)
    pipeline.run(until="featurize")
    model = save_tiny_net(tmp_path / "net.pt", precision=precision)
    # the stored features are the model's: same backbone, weights, cut, size and precision
    assert StoredFeatures(pipeline.features).config == load_net(model)[1].extractor
    stored = build_index_from_features(model, pipeline.ingested, pipeline.split_csv,
                                       pipeline.features, tmp_path / "i1")
    passed, counts = build_index(model, pipeline.ingested / "images", tmp_path / "i2")
    assert counts["computed"] == 10
    assert stored.paths == passed.paths and stored.hashes == passed.hashes
    assert stored.precision == passed.precision == precision
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(stored.probs, passed.probs, atol=tolerance)
    np.testing.assert_allclose(stored.embeddings, passed.embeddings, atol=tolerance)
    # and not trivially: the photos differ from each other
    assert np.abs(stored.embeddings[0] - stored.embeddings[1]).max() > 0.05


def test_rank_matches_brute_force_cosine(collection):
    index = collection.index
    query = np.random.default_rng(0).normal(size=index.embeddings.shape[1])
    hits = rank(index, query, top=5)
    scores = index.embeddings @ (query / np.linalg.norm(query))
    assert [h.row for h in hits] == list(np.argsort(-scores)[:5])
    assert [h.score for h in hits] == pytest.approx(sorted(scores, reverse=True)[:5], abs=1e-5)
    assert len(rank(index, query, top=100)) == N_PHOTOS


def test_query_finds_the_same_photo_first_and_skips_identical_bytes(collection, searcher):
    photo = collection.images / "000007.jpg"
    as_png = searcher.query(png_bytes(photo), "q.png", top=3)
    assert as_png["results"][0]["path"] == "000007.jpg"
    assert as_png["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    same_bytes = searcher.query(photo.read_bytes(), "q.jpg", top=N_PHOTOS)
    assert same_bytes["exclude"] == [6]
    assert "000007.jpg" not in [r["path"] for r in same_bytes["results"]]
    assert len(same_bytes["results"]) == N_PHOTOS - 1
    by_row = searcher.query_row(6, top=3)
    assert [r["row"] for r in by_row["results"]] == [r["row"] for r in same_bytes["results"][:3]]


def test_where_keeps_only_photos_with_every_attribute(collection, searcher):
    index = collection.index
    has_red = set(np.flatnonzero(index.probs[:, LABELS.index("red")] >= index.threshold))
    assert 0 < len(has_red) < N_PHOTOS
    result = searcher.query_row(0, top=N_PHOTOS, where="red")
    assert {r["row"] for r in result["results"]} == has_red - {0}
    assert all("red" in r["attributes"] for r in result["results"])
    both = searcher.similar(result["embedding"], top=N_PHOTOS, where=["red", "blue"])
    assert all({"red", "blue"} <= set(r["attributes"]) for r in both)


def test_unknown_where_names_are_a_clear_error(collection):
    assert parse_where(" red, ,blue,red", LABELS) == ["red", "blue"]
    with pytest.raises(FashionError, match="unknown attribute 'pattern_floral'"):
        parse_where("red,pattern_floral", LABELS)


def test_rebuild_reuses_unchanged_photos_and_skips_unreadable_ones(collection, searcher,
                                                                   tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(collection.images, photos)
    same = {"predictor": searcher.predictor}  # the model's network, already loaded
    first, counts = build_index(collection.model, photos, tmp_path / "index", **same)
    assert counts == {"computed": N_PHOTOS, "reused": 0, "skipped": 0}
    (photos / "new").mkdir()
    Image.new("RGB", (40, 60), (200, 30, 30)).save(photos / "new" / "red.PNG")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "notes.txt").write_text("ignored")
    second, counts = build_index(collection.model, photos, tmp_path / "index", **same)
    assert counts == {"computed": 1, "reused": N_PHOTOS, "skipped": 1}
    assert second.paths[-1] == "new/red.PNG" and second.skipped == ["broken.jpg"]
    assert np.array_equal(second.embeddings[:N_PHOTOS], first.embeddings)
    other_model = save_tiny_net(tmp_path / "other.pt", seed=1)
    _, counts = build_index(other_model, photos, tmp_path / "index")
    assert counts["computed"] == N_PHOTOS + 1


def test_index_errors_are_one_line(collection, tmp_path):
    with pytest.raises(FashionError, match="not a folder"):
        build_index(collection.model, tmp_path / "missing", tmp_path / "index")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FashionError, match=r"no photo files \(\.jpg, \.jpeg, .*\.jfif"):
        build_index(collection.model, tmp_path / "empty", tmp_path / "index")
    with pytest.raises(FashionError, match="dvc repro index"):
        SearchIndex.load(tmp_path / "nothing")
    other = save_tiny_net(tmp_path / "other.pt", seed=1)
    with pytest.raises(FashionError, match="another model"):
        Searcher.open(collection.index_dir, other)


def test_index_paths_never_leave_the_collection(collection, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(collection.index_dir, index_dir)
    paths = index_dir / "paths.csv"
    paths.write_text(paths.read_text().replace("000001.jpg", "../../../etc/passwd", 1))
    index = SearchIndex.load(index_dir)
    with pytest.raises(FashionError, match="outside the collection"):
        index.file(0)
    with pytest.raises(FashionError, match="no photo"):
        index.file(N_PHOTOS)


def test_cli_search_prints_attributes_and_results(collection, capsys):
    photo = str(collection.images / "000003.jpg")
    common = ["--index", str(collection.index_dir), "--model", str(collection.model)]
    main(["search", photo, "--top", "4", "--json", "--where", "red", *common])
    answer = json.loads(capsys.readouterr().out)
    names = [a["name"] for a in answer["attributes"]]
    assert sorted(names) == sorted(LABELS)  # every attribute once, most likely first
    probabilities = [a["probability"] for a in answer["attributes"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < len(answer["results"]) <= 4
    assert all("red" in r["attributes"] for r in answer["results"])
    assert all(r["file"].endswith(r["path"]) for r in answer["results"])
    main(["search", photo, "--top", "2", *common])
    text = capsys.readouterr().out
    assert "predicted attributes" in text and "Most similar of 24 photos" in text
    assert len([line for line in text.splitlines() if ".jpg" in line and "  0." in line]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["search", photo, "--where", "red,sparkly", *common])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: --where: unknown attribute 'sparkly'")
    assert len(error.strip().splitlines()) == 1


def test_a_model_finds_its_relative_weights_file_from_another_directory(collection, tmp_path,
                                                                        monkeypatch):
    """models/net.pt saved with ``model.weights: weights/vgg.pth`` (relative to the repo)."""
    from dataclasses import replace

    import torch

    from fashiondvc import backbones
    from fashiondvc.net import load_net, save_net
    from fashiondvc.predictor import Predictor

    repo = tmp_path / "repo"
    (repo / "weights").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    generator = torch.Generator().manual_seed(1)  # not the weights of model.weights: random
    torch.save({f"features.{k}": torch.randn(v.shape, generator=generator) * 0.05
                for k, v in backbones.vgg16_layers().state_dict().items()},
               repo / "weights" / "vgg.pth")
    net, config = load_net(collection.model)
    save_net(net, repo / "models" / "net.pt",
             replace(config, extractor=replace(config.extractor, weights="weights/vgg.pth")))
    monkeypatch.chdir(tmp_path)  # not the repo: "weights/vgg.pth" does not exist from here
    predictor = Predictor.from_file(repo / "models" / "net.pt")
    assert predictor.config.extractor.weights == str(repo / "weights" / "vgg.pth")
    vgg16 = backbones.get("vgg16")
    expected = backbones.frozen_part(vgg16, str(repo / "weights" / "vgg.pth"), 13).state_dict()
    ours = predictor.extractor.part.state_dict()
    assert list(ours) == list(expected) and len(ours) == 26  # 13 convs: weight and bias
    for key, theirs in expected.items():
        assert torch.equal(ours[key].float(), theirs.float()), key
    random = backbones.frozen_part(vgg16, "random", 13).state_dict()
    assert not torch.equal(ours["0.weight"].float(), random["0.weight"].float())
    (repo / "dvc.yaml").unlink()  # no repository above the model: the path stays as saved
    with pytest.raises(FashionError, match="weights/vgg.pth"):
        Predictor.from_file(repo / "models" / "net.pt")


@pytest.mark.slow
def test_index_stage_retrieval_metric_and_cli_in_a_dvc_repo(pipeline_repo, monkeypatch, capsys):
    first = run(["dvc", "repro"], pipeline_repo)
    assert "Running stage 'index'" in first.stdout
    metrics = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    index = SearchIndex.load(pipeline_repo / "data" / "index")
    assert len(index) == 24
    # retrieval_p10 recomputed from the index (built from the same stored features)
    from fashiondvc.labels import resolve_label_set, targets_for
    from fashiondvc.retrieval import precision_at_k

    labels = pd.read_csv(pipeline_repo / "data" / "ingested" / "labels.csv")
    split = pd.read_csv(pipeline_repo / "data" / "split.csv").query("copy == 0")
    test_ids = set(split.loc[split["subset"] == "test", "image_id"])
    ids = [int(p[:6]) for p in index.paths]
    y, m = targets_for(labels, ids, resolve_label_set("colors11"))
    positive = (y > 0.5) & m
    is_test = np.array([i in test_ids for i in ids])
    expected = precision_at_k(index.embeddings[is_test], positive[is_test],
                              index.embeddings[~is_test], positive[~is_test], 10)
    assert metrics["retrieval_p10"] == pytest.approx(expected, abs=1e-4)
    assert index.root.resolve() == (pipeline_repo / "data" / "ingested" / "images").resolve()
    monkeypatch.chdir(pipeline_repo)  # the CLI's defaults: data/index, models/net.pt, params.yaml
    main(["search", "data/ingested/images/000002.jpg", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["results"]) == 10  # search.top in params.yaml
    assert "000002.jpg" not in [r["path"] for r in answer["results"]]

    photos = pipeline_repo / "photos"
    shutil.copytree(pipeline_repo / "data" / "ingested" / "images", photos)
    Image.new("RGB", (50, 80), (30, 60, 200)).save(photos / "blue.png")
    set_params(pipeline_repo / "params.yaml", {"search.images": "photos"})
    second = run(["dvc", "repro"], pipeline_repo)
    assert "Running stage 'index'" in second.stdout and "Running stage 'train'" not in second.stdout
    assert "1 featurized, 24 reused" in second.stdout
    assert len(SearchIndex.load(pipeline_repo / "data" / "index")) == 25


def test_text_query_filters_and_ranks_by_the_models_joint_probability(collection):
    from fashiondvc.search import rank_text
    from fashiondvc.words import TextQuery

    index = collection.index
    red, blue = LABELS.index("red"), LABELS.index("blue")
    hits, matches = rank_text(index, TextQuery(("red",), ("blue",)), top=N_PHOTOS)
    p = index.probs.astype(np.float64)
    wanted = np.flatnonzero((p[:, red] >= index.threshold) & (p[:, blue] < index.threshold))
    assert 0 < matches == len(wanted) and {h.row for h in hits} == set(wanted)
    joint = p[:, red] * (1 - p[:, blue])
    assert [h.row for h in hits] == list(wanted[np.argsort(-joint[wanted], kind="stable")])
    assert [h.score for h in hits] == pytest.approx(sorted(joint[wanted], reverse=True))
    top2, _ = rank_text(index, TextQuery(("red",), ("blue",)), top=2)
    assert [h.row for h in top2] == [h.row for h in hits[:2]]


def test_cli_text_search_needs_no_network_and_explains_unknown_words(collection, capsys,
                                                                      tmp_path):
    # the model path does not exist: --text answers from the index alone
    common = ["--index", str(collection.index_dir), "--model", str(tmp_path / "none.pt")]
    main(["search", "--text", "crimson, without navy", "--json", "--top", "50", *common])
    answer = json.loads(capsys.readouterr().out)
    assert answer["include"] == ["red"] and answer["exclude"] == ["blue"]
    assert answer["matches"] == len(answer["results"]) > 0
    assert all("red" in r["attributes"] and "blue" not in r["attributes"]
               for r in answer["results"])
    main(["search", "--text", "red, no blue", "--top", "3", *common])
    text = capsys.readouterr().out
    assert "-> red + no blue" in text and len(text.strip().splitlines()) == 4
    for argv, fragment in ((["--text", "sparkly red"], "unknown word 'sparkly'"),
                           ([], "give a photo or --text"),
                           (["x.jpg", "--text", "red"], "give a photo or --text")):
        with pytest.raises(SystemExit):
            main(["search", *argv, *common])
        error = capsys.readouterr().err
        assert fragment in error and len(error.strip().splitlines()) == 1


def test_search_outside_a_repository_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    photo = tmp_path / "q.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    with pytest.raises(SystemExit):
        main(["search", str(photo)])
    error = capsys.readouterr().err
    assert "not a fashiondvc repository" in error and str(tmp_path) in error
    assert len(error.strip().splitlines()) == 1


def test_a_file_name_that_is_not_utf8_is_indexed_and_printed(collection, tmp_path):
    """b"robe caf\\xe9.jpg" (an old archive's Latin-1): the index kept it (paths.csv was a
    UnicodeEncodeError) and `fashiondvc search` prints it as \\xe9 in a real process, whose
    stdout is strict UTF-8."""
    import os
    import sys

    images = tmp_path / "images"
    shutil.copytree(collection.images, images)
    latin1 = os.fsdecode(b"robe caf\xe9.jpg")
    shutil.copy(images / "000005.jpg", images / latin1)
    build_index(collection.model, images, tmp_path / "index", threshold=0.0)  # all match
    assert latin1 in SearchIndex.load(tmp_path / "index").paths
    common = ["--index", str(tmp_path / "index"), "--model", str(collection.model), "--top", "30"]
    for args in ([str(images / latin1)], [str(images / latin1), "--json"],
                 ["--text", "red"], ["--text", "red", "--json"]):
        result = run([sys.executable, "-m", "fashiondvc.cli", "search", *args, *common],
                     cwd=tmp_path, env={"PYTHONIOENCODING": "utf-8"})
        assert "caf\\xe9.jpg" in result.stdout.replace("\\\\", "\\"), args


@pytest.mark.parametrize("name, damage", [
    ("index.npz", "half"), ("index.npz", "empty"), ("index.npz", "garbage"),
    ("meta.json", "half"), ("meta.json", "empty"), ("meta.json", "missing"),
    ("paths.csv", "half"), ("paths.csv", "empty"), ("paths.csv", "missing")])
def test_a_damaged_index_is_one_line_naming_it_and_what_to_rerun(collection, tmp_path, name,
                                                                 damage):
    """A partial ``dvc pull`` or a full disk: every index file cut, emptied, replaced or gone
    (the npz raised zipfile's BadZipFile or numpy's EOFError, uncaught), and the index stage
    rebuilds over such a folder instead of failing."""
    folder = tmp_path / "index"
    shutil.copytree(collection.index_dir, folder)
    path = folder / name
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes({"half": data[:len(data) // 2], "empty": b"",
                          "garbage": b"\x00garbage" * 50}[damage])
    with pytest.raises(FashionError, match=r"index.*(unreadable search index|disagree|holds no)"
                                           r".*(rerun `dvc repro index`|run `dvc repro index`)"):
        SearchIndex.load(folder)
    if damage != "missing":
        _, counts = build_index(collection.model, collection.images, folder)
        assert counts["computed"] == N_PHOTOS
