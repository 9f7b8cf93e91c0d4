"""DVC experiments and MLflow: one run per pipeline run, queues, and the paper's table."""

import sqlite3

import pandas as pd
import pytest
from conftest import run, wait_for_queue
from mlflow.tracking import MlflowClient

from fashiondvc.paper import paper_table

pytestmark = pytest.mark.slow


def mlflow_runs(repo):
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashiondvc")
    runs = client.search_runs([experiment.experiment_id])
    return client, {r.info.run_name: r for r in runs}


def commit_baseline(repo):
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)


def test_two_experiments_make_two_runs_and_a_report(pipeline_repo):
    repo = pipeline_repo
    commit_baseline(repo)
    for name, k in (("g1", 2), ("g2", 5)):
        result = run(["dvc", "exp", "run", "-n", name, "-S", "labels=colors11", "-S", f"k={k}",
                      "-S", "lr=1e-07"], repo)
        assert "Running stage 'featurize'" not in result.stdout  # stored features reused
        assert "Running stage 'train'" in result.stdout

    client, runs = mlflow_runs(repo)
    assert {"g1", "g2"} <= set(runs)
    g1, g2 = runs["g1"], runs["g2"]
    assert (g1.data.params["k"], g2.data.params["k"]) == ("2", "5")
    assert g1.data.params["model.frozen_convs"] == "13"
    assert g1.data.tags["dvc.experiment"] == "g1"
    assert g1.info.status == "FINISHED"
    history = client.get_metric_history(g1.info.run_id, "epoch_test_map")
    assert sorted(m.step for m in history) == [1, 2]
    assert "f1_micro" in g1.data.metrics and "test_loss" in g1.data.metrics
    artifacts = {a.path for a in client.list_artifacts(g1.info.run_id)}
    assert {"metrics.json", "pr_curves.csv", "model", "plots"} <= artifacts  # model: pyfunc

    diff = run(["dvc", "metrics", "diff", "g1", "g2"], repo).stdout
    assert "test_loss" in diff and "g1" in diff and "g2" in diff
    params = run(["dvc", "params", "diff", "g1", "g2"], repo).stdout
    assert "k" in params.split() and "5" in params.split()

    report = run(["fashiondvc", "paper", "report"], repo).stdout
    assert "wrote reports/latest/paper_table.md" in report  # never the committed results
    table = pd.read_csv(repo / "reports" / "latest" / "paper_table.csv")
    assert table.loc[table["row"] == "g2", "ours_test_loss"].item() == pytest.approx(
        g2.data.metrics["test_loss"], rel=1e-5)  # the CSV keeps 6 significant digits
    assert table["status"].tolist().count("done") == 2
    assert "not run yet" in report and "2 of 14 rows" in report
    assert "`model.weights` = random" in report and "`model.frozen_convs` = 13" in report
    assert (repo / "reports" / "latest" / "paper_table.png").stat().st_size > 5000


def test_four_queued_experiments_in_parallel_make_four_runs(pipeline_repo):
    repo = pipeline_repo
    commit_baseline(repo)
    for i, k in enumerate((1.5, 3, 4, 6)):
        run(["dvc", "exp", "run", "--queue", "-n", f"q{i}", "-S", f"k={k}"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo, capture=False)
    status = wait_for_queue(repo)
    assert status.count("Success") == 4, status

    _, runs = mlflow_runs(repo)
    queued = {name: r for name, r in runs.items() if name.startswith("q")}
    assert sorted(queued) == ["q0", "q1", "q2", "q3"]
    for r in queued.values():
        assert r.info.status == "FINISHED"
        assert "f1_micro" in r.data.metrics
    logs = "".join(run(["dvc", "queue", "logs", name], repo, check=False).stdout
                   for name in queued)
    assert "database is locked" not in logs
    assert "MLflow tracking failed" not in logs
    with sqlite3.connect(repo / "mlflow.db") as db:
        per_experiment = dict(db.execute(
            "select e.name, count(*) from runs r join experiments e"
            " on r.experiment_id = e.experiment_id group by e.name").fetchall())
    # 4 + the baseline; the frozen trunk the logged models refer to is stored once, not once
    # per worker that found it missing at the same time
    assert per_experiment == {"fashiondvc": 5, "fashiondvc-trunks": 1}


def test_paper_queue_queues_the_fourteen_rows(pipeline_repo):
    repo = pipeline_repo
    commit_baseline(repo)
    run(["fashiondvc", "paper", "queue", "-S", "train.epochs=1"], repo)
    status = run(["dvc", "queue", "status"], repo).stdout
    import dvc.api

    rows = {r["Experiment"]: r for r in dvc.api.exp_show(repo=str(repo))
            if r.get("Experiment") and r.get("State") == "Queued"}
    run(["dvc", "queue", "remove", "--all"], repo, check=False)
    assert sorted(rows, key=lambda n: int(n[1:])) == [f"g{i}" for i in range(1, 15)]
    assert status.count("Queued") == 14
    table = paper_table().set_index("row")
    for name, row in rows.items():
        assert row["labels"] == table.loc[name, "labels"]
        assert float(row["k"]) == table.loc[name, "k"]
        assert float(row["lr"]) == pytest.approx(table.loc[name, "lr"])
        assert float(row["train.epochs"]) == 1
