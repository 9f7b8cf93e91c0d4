"""A shared MLflow server on PostgreSQL: queued experiments log runs, curves and artifacts to it."""

import json
from pathlib import Path

import psycopg
import pytest
from conftest import run, wait_for_queue
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_two_queued_experiments_log_to_the_postgres_server(pipeline_repo, tracking_server,
                                                            tmp_path):
    repo, server = pipeline_repo, tracking_server
    run(["dvc", "repro"], repo)  # the baseline logs to the repo's own SQLite store
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    for name, k in (("s1", 3), ("s2", 5)):  # k differs from the baseline's 2: train reruns
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"k={k}"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo, capture=False,
        env={"MLFLOW_TRACKING_URI": server.url})
    status = wait_for_queue(repo)
    assert status.count("Success") == 2, status
    logs = "".join(run(["dvc", "queue", "logs", name], repo, check=False).stdout
                   for name in ("s1", "s2"))
    assert "MLflow tracking failed" not in logs  # tracking warns and goes on when unreachable

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("fashiondvc")
    assert experiment is not None, "no run reached the server"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["s1", "s2"]  # exactly the queued two; the baseline stayed local
    with psycopg.connect(server.backend_store_uri.replace("+psycopg", "")) as db:
        stored = db.execute("select count(*) from runs join experiments using (experiment_id) "
                            "where experiments.name = 'fashiondvc'").fetchone()[0]
        on_clients = db.execute("select distinct artifact_uri from runs "
                                "where artifact_uri not like 'mlflow-artifacts:%'").fetchall()
    assert stored == 2  # in PostgreSQL
    assert on_clients == []  # no run of any experiment keeps its files on a client's disk

    for name, k in (("s1", "3"), ("s2", "5")):
        r = runs[name]
        assert r.info.status == "FINISHED"
        assert r.data.params["k"] == k and r.data.params["train.epochs"] == "2"
        assert r.data.tags["dvc.experiment"] == name
        history = client.get_metric_history(r.info.run_id, "epoch_test_map")
        assert sorted(m.step for m in history) == [1, 2]
        # artifacts went through the server (mlflow-artifacts:/ proxy) onto its disk
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
        listed = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"metrics.json", "history.csv", "plots"} <= listed
        on_server = server.artifacts / experiment.experiment_id / r.info.run_id / "artifacts"
        assert (on_server / "plots" / "history.png").is_file()
        local = Path(download_artifacts(run_id=r.info.run_id, artifact_path="metrics.json",
                                        dst_path=str(tmp_path / name), tracking_uri=server.url))
        assert json.loads(local.read_text())["f1_micro"] == pytest.approx(
            r.data.metrics["f1_micro"])
        plots = Path(download_artifacts(run_id=r.info.run_id, artifact_path="plots",
                                        dst_path=str(tmp_path / name), tracking_uri=server.url))
        assert (plots / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
