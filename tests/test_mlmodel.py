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
table = model.predict(pd.DataFrame({"photo": [sys.argv[2], Path(sys.argv[3]).read_bytes()]}))
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
    result = subprocess.run([sys.executable, "-c", PREDICT, uris[0], str(photos[0]),
                             str(photos[1])], capture_output=True, text=True, timeout=600,
                            env={**os.environ}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(result.stdout.strip().splitlines()[-1])
    from fashiondvc.cli import main

    for photo, row in zip(photos, table["rows"], strict=True):
        capsys.readouterr()
        main(["search", str(photo), "--json", "--index", str(collection.index_dir),
              "--model", str(collection.model)])
        found = json.loads(capsys.readouterr().out)
        expected = {a["name"]: a["probability"] for a in found["attributes"]}
        assert table["columns"] == collection.index.labels
        assert dict(zip(table["columns"], row, strict=True)) == pytest.approx(expected,
                                                                              abs=1e-6)
