"""Promote a registered model to an alias, then index, search and serve it by that URI."""

from __future__ import annotations

import io
import json

import pytest
from searchkit import make_collection, save_tiny_net

from fashiondvc import mlmodel, tracking
from fashiondvc.cli import main
from fashiondvc.errors import FashionError
from fashiondvc.registry import open_model, promote
from fashiondvc.search import Searcher
from fashiondvc.web import create_app

CHAMPION = f"models:/{mlmodel.REGISTERED_NAME}@champion"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite store holding two registered versions: experiments exp-a and exp-b."""
    root = tmp_path_factory.mktemp("registry")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    patch.setenv("DVC_ROOT", str(root))
    collection = make_collection(root / "c")
    other = save_tiny_net(root / "other.pt", seed=1)
    client = tracking.open_client()
    exp_id = tracking.experiment_id(client)
    for name, model in (("exp-a", collection.model), ("exp-b", other)):
        patch.setenv("DVC_EXP_NAME", name)
        run = tracking.TrackedRun.create(client, exp_id, name, {})
        mlmodel.log_model(run, model, "cafe")
        run.finish()
    yield root, collection, client
    patch.undo()


def test_promote_points_the_alias_at_the_experiments_version(registry, capsys):
    _, _, client = registry
    main(["promote", "exp-b"])
    assert "@champion -> version 2 (experiment exp-b" in capsys.readouterr().out
    def champion() -> str:
        return str(client.get_model_version_by_alias(mlmodel.REGISTERED_NAME,
                                                     "champion").version)

    assert champion() == "2"
    assert str(promote("exp-a").version) == "1"
    assert champion() == "1"
    with pytest.raises(FashionError) as raised:
        promote("exp-zzz")
    assert "experiments with one: exp-a, exp-b" in str(raised.value)
    with pytest.raises(FashionError, match="not a valid alias"):
        promote("exp-a", alias="latest")


def test_index_search_and_serve_run_on_the_champion_by_uri(registry, capsys, tmp_path):
    _, collection, _ = registry
    promote("exp-a")
    opened = open_model(CHAMPION)
    assert "version 1, experiment exp-a" in opened.description
    photo = collection.images / "000003.jpg"
    direct = Searcher.open(collection.index_dir, collection.model).query(
        photo.read_bytes(), "q.jpg", top=3)
    probs, _ = opened.predictor.photo(photo.read_bytes(), "q.jpg")
    assert [a["probability"] for a in direct["attributes"]] == pytest.approx(
        sorted(probs.tolist(), reverse=True), abs=1e-6)

    out = tmp_path / "index-champion"
    main(["index", "--model", CHAMPION, "--images", str(collection.images), "--out", str(out)])
    assert "version 1" in capsys.readouterr().out
    main(["search", str(photo), "--json", "--top", "3", "--index", str(out), "--model",
          CHAMPION])
    found = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in found["results"]] == [r["path"] for r in direct["results"]]

    client = create_app(Searcher.open(out, CHAMPION), top=3).test_client()
    answer = client.post("/api/query", data={"photo": (io.BytesIO(photo.read_bytes()), "q.jpg")},
                         content_type="multipart/form-data")
    assert answer.status_code == 200
    assert [r["path"] for r in answer.get_json()["results"]] == [
        r["path"] for r in direct["results"]]

    promote("exp-b")  # the alias moves: the index of version 1 is refused, not misused
    with pytest.raises(FashionError, match="the index was built with another model than "
                                           r"models:/fashiondvc-attributes@champion \(version 2"):
        Searcher.open(out, CHAMPION)


@pytest.mark.parametrize(("uri", "fragment"), [
    (f"models:/{mlmodel.REGISTERED_NAME}@nobody", "no such registered model version"),
    (f"models:/{mlmodel.REGISTERED_NAME}/99", "no such registered model version"),
    ("models:/broken", "expected models:/<name>/<version>"),
])
def test_unknown_registry_uris_are_one_line_errors(registry, capsys, uri, fragment):
    _, collection, _ = registry
    with pytest.raises(SystemExit):
        main(["search", str(collection.images / "000003.jpg"), "--index",
              str(collection.index_dir), "--model", uri])
    error = capsys.readouterr().err
    assert fragment in error and len(error.strip().splitlines()) == 1, error


def test_opening_a_registered_model_prints_no_download_bars(registry, capsys, monkeypatch):
    """The project's own loads (search, serve, index by URI) show no "Downloading artifacts"
    bars, even when the user's environment leaves MLflow's progress bars on."""
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    capsys.readouterr()
    open_model(f"models:/{mlmodel.REGISTERED_NAME}/1")
    assert "Downloading artifacts" not in capsys.readouterr().err
