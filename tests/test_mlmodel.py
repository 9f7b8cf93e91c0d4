"""The logged, registered pyfunc model: loaded in a fresh process it scores photos as search."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from searchkit import make_collection

from fashiondvc import mlmodel, tracking

PREDICT = """
import json, sys
from pathlib import Path
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
import pandas as pd
table = model.predict(pd.DataFrame({"photo": [Path(p).read_bytes() for p in sys.argv[2:]]}))
print(json.dumps({"columns": list(table.columns), "rows": table.values.tolist()}))
"""


@pytest.mark.slow
def test_registered_model_predicts_what_search_predicts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-m")
    collection = make_collection(tmp_path / "c")
    client = tracking.open_client()
    exp_id = tracking.experiment_id(client)
    uris = []
    for name in ("exp-m", "exp-n"):  # two experiments, one trunk
        run = tracking.TrackedRun.create(client, exp_id, name, {})
        uris.append(mlmodel.log_model(run, collection.model, "cafe"))
        run.finish()
    assert uris == [f"models:/{mlmodel.REGISTERED_NAME}/1", f"models:/{mlmodel.REGISTERED_NAME}/2"]
    version = client.get_model_version(mlmodel.REGISTERED_NAME, "1")
    assert version.tags["dvc.experiment"] == "exp-m" and version.tags["dataset.sha256"] == "cafe"
    trunks = client.search_runs([client.get_experiment_by_name(
        mlmodel.TRUNK_EXPERIMENT).experiment_id])
    assert len(trunks) == 1  # the frozen trunk is stored once, not per experiment
    model_bytes = sum(f.stat().st_size for f in (tmp_path / "mlartifacts").rglob("*")
                      if f.is_file() and "trunks" not in f.parts)
    trunk_bytes = sum(f.stat().st_size for f in (tmp_path / "mlartifacts" / "trunks").rglob("*")
                      if f.is_file())
    print(f"per-model bytes {model_bytes / 2:.0f}, trunk bytes {trunk_bytes}")

    photos = sorted(collection.images.glob("*.jpg"))[:2]
    env = {**os.environ}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)  # as in a user's own process
    result = subprocess.run([sys.executable, "-c", PREDICT, uris[0], str(photos[0]),
                             str(photos[1])], capture_output=True, text=True, timeout=600,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # MLflow's own download of the model folder happens before any project code runs: that
    # one bar is the user's setting; the trunk the model downloads on load prints none
    assert result.stderr.count("Downloading artifacts:   0%") <= 1, result.stderr[-3000:]
    table = json.loads(result.stdout.strip().splitlines()[-1])
    from fashiondvc.cli import main

    for photo, row in zip(photos, table["rows"], strict=True):
        capsys.readouterr()
        main(["search", str(photo), "--json", "--index", str(collection.index_dir),
              "--model", str(collection.model)])
        found = json.loads(capsys.readouterr().out)
        expected = {a["name"]: a["probability"] for a in found["attributes"]}
        assert table["columns"] == [*collection.index.labels, "error"]
        assert row[-1] is None
        row = row[:-1]
        assert dict(zip(table["columns"], row, strict=False)) == pytest.approx(expected,
                                                                              abs=1e-6)


# --------------------------------------------------------------------------- inputs, one row each

ROW_CASES = [
    (None, None, "row 0: no photo (null)"),
    (float("nan"), None, "row 0: no photo (null)"),
    (5, None, "`photo` is of type int, not bytes"),
    ([1, 2], None, "`photo` is of type list, not bytes"),
    ("/etc/hostname", None, "`photo` holds text, not bytes; paths are not accepted"),
    (b"", None, "row 0: empty photo (0 bytes)"),
    (b"x" * (mlmodel.MAX_PHOTO_BYTES + 1), None, "photo too large (50 MB; at most 50 MB)"),
    (b"jpeg", "a.jpg", "both `photo` and `path` are set"),
    (None, 7, "`path` is of type int, not a string"),
]


@pytest.mark.parametrize(("photo", "path", "message"), ROW_CASES)
def test_each_bad_row_gets_one_clear_line(photo, path, message):
    from fashiondvc.errors import FashionError

    with pytest.raises(FashionError) as raised:
        mlmodel.photo_bytes(0, photo, path, None)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_paths_are_read_only_inside_the_operators_root(tmp_path, monkeypatch):
    from fashiondvc.errors import FashionError

    root, outside = tmp_path / "photos", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.jpg").write_bytes(b"photo a")
    (outside / "key").write_bytes(b"secret")
    (root / "escape").symlink_to(outside / "key")
    (root / "dangling").symlink_to(outside / "nothing")
    (root / "inside").symlink_to(root / "sub" / "a.jpg")

    def message(path, root_):
        with pytest.raises(FashionError) as raised:
            mlmodel.photo_bytes(0, None, path, root_)
        return str(raised.value)

    no_root = {message(p, None) for p in ("/etc/hostname", "/nonexistent", "/tmp",
                                          str(root / "sub" / "a.jpg"))}
    assert len(no_root) == 1 and "paths are not accepted" in no_root.pop()
    monkeypatch.delenv(mlmodel.PHOTO_ROOT_ENV, raising=False)
    assert mlmodel.photo_root({}) is None  # the default: no folder at all
    monkeypatch.setenv(mlmodel.PHOTO_ROOT_ENV, str(root))
    allowed = mlmodel.photo_root({})
    assert allowed == root.resolve()
    assert mlmodel.photo_bytes(0, None, "sub/a.jpg", allowed) == b"photo a"
    assert mlmodel.photo_bytes(0, None, str(root / "sub" / "a.jpg"), allowed) == b"photo a"
    assert mlmodel.photo_bytes(0, None, "inside", allowed) == b"photo a"
    refused = {message(p, allowed) for p in (
        "/etc/hostname", "/nonexistent", "/tmp", str(outside / "key"), "../secret/key",
        "sub/../../secret/key", "escape", "dangling", "sub", "missing.jpg", "a\0b")}
    assert refused == {"row 0: no such photo under the photo root"}
    with pytest.raises(FashionError, match="is not a folder"):
        mlmodel.photo_root({"photo_root": str(tmp_path / "nowhere")})


# --------------------------------------------------------------------------- mlflow models serve


def _post(url: str, payload: dict) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/invocations", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _split(column: str, values: list) -> dict:
    return {"dataframe_split": {"columns": [column], "data": [[v] for v in values]}}


@pytest.mark.slow
def test_mlflow_models_serve_scores_base64_photos_and_opens_no_client_path(tmp_path,
                                                                           monkeypatch):
    """A real `mlflow models serve` of a registered version: base64 photos score as in
    process; a path is never opened (the same answer whether it exists or not); null and
    non-images are clear one-line refusals without a traceback; the operator's root works."""
    import base64

    import mlflow.pyfunc
    import pandas as pd
    from serverkit import model_server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv(mlmodel.PHOTO_ROOT_ENV, raising=False)
    collection = make_collection(tmp_path / "c")
    client = tracking.open_client()
    run = tracking.TrackedRun.create(client, tracking.experiment_id(client), "exp-s", {})
    uri = mlmodel.log_model(run, collection.model, "cafe")
    run.finish()
    photos = sorted(collection.images.glob("*.jpg"))[:2]
    expected = mlflow.pyfunc.load_model(uri).predict(
        pd.DataFrame({"photo": [p.read_bytes() for p in photos]}))
    labels = collection.index.labels
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in photos]

    with model_server(uri, tmp_path) as (url, log):
        status, body = _post(url, _split("photo", encoded))
        assert status == 200, body
        answer = json.loads(body)["predictions"]
        for row, (_, want) in zip(answer, expected.iterrows(), strict=True):
            assert row["error"] is None
            assert [row[a] for a in labels] == pytest.approx([want[a] for a in labels],
                                                              abs=1e-6)
        records = _post(url, {"dataframe_records": [{"photo": encoded[0]}]})
        assert json.loads(records[1])["predictions"][0]["red"] == pytest.approx(
            answer[0]["red"], abs=1e-6)

        # a path in the photo column is base64 text to MLflow, never a file: an existing and a
        # missing path of one length get the same answer, and no answer holds a traceback
        answers = {}
        for pair in (("/etc/hostname", "/etc/hostnamx"), ("/tmp", "/tmq"),
                     ("/root/.ssh/id_rsa", "/root/.ssh/id_rsb"),
                     ("/etc/passwd", "/etc/passwx"), ("/nonexistent", "/nonexistenx")):
            replies = [_post(url, _split("photo", [p])) for p in pair]
            assert replies[0] == replies[1], replies
            answers[pair[0]] = replies[0]
        for path_ in ("/etc/hostname", "/nonexistent", "/tmp", "/root/.ssh/id_rsa"):
            replies = [_post(url, _split("path", [path_]))]
            answers[f"path {path_}"] = replies[0]
        path_answers = {a for k, a in answers.items() if k.startswith("path ")}
        assert len(path_answers) == 1  # one message for every path
        status, body = path_answers.pop()
        assert status == 200 and "paths are not accepted" in json.loads(body)[
            "predictions"][0]["error"]
        not_image = json.loads(answers["/tmp"][1])["predictions"][0]
        assert not_image["error"] == "row 0: not a readable image (not a JPEG, PNG, WebP, " \
                                     "AVIF, GIF, BMP or TIFF image)" and not_image["red"] is None
        assert answers["/etc/hostname"][0] == 400  # MLflow's base64 decoder refuses it
        status, body = _post(url, _split("photo", [None]))
        assert status == 400 and "column photo" in body
        status, body = _post(url, _split("path", [None]))
        assert "row 0: no photo (null)" in json.loads(body)["predictions"][0]["error"]
        status, body = _post(url, _split("photo", [encoded[0], base64.b64encode(b"").decode()]))
        rows = json.loads(body)["predictions"]
        assert rows[0]["error"] is None and rows[1]["error"] == "row 1: empty photo (0 bytes)"
        for _, body in answers.values():
            assert "Traceback" not in body and "stack_trace" not in body
            assert "No such file" not in body and "Is a directory" not in body
        assert "Traceback" not in log.read_text()

    root = tmp_path / "served"
    root.mkdir()
    (root / "p.jpg").write_bytes(photos[0].read_bytes())
    with model_server(uri, tmp_path, env={mlmodel.PHOTO_ROOT_ENV: str(root)}) as (url, _):
        status, body = _post(url, _split("path", ["p.jpg", "/etc/hostname", "../c/net.pt"]))
        rows = json.loads(body)["predictions"]
        assert rows[0]["red"] == pytest.approx(answer[0]["red"], abs=1e-6)
        assert [r["error"] for r in rows[1:]] == ["row 1: no such photo under the photo root",
                                                  "row 2: no such photo under the photo root"]
