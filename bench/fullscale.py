"""The whole paper table (g1..g14) on the real archive, in a scratch clone, timed end to end.

    .venv/bin/python bench/fullscale.py --archive /path/to/ClothingAttributeDataset.zip

Clones this repository to ``--dest``, commits the full-scale settings there (absolute archive
path, ``model.weights`` random or imagenet, ``model.frozen_convs``, ``train.epochs``), runs
``dvc repro evaluate`` once and then one ``dvc exp run -n gN ... evaluate`` per table row,
sequentially, in the clone's workspace. Targeting ``evaluate`` runs the stages the table needs
(train and evaluate after the first run) and leaves out the search ``index`` stage, which is not
part of the table. Writes ``bench/fullscale.json`` (timings, stages, peak memory, load) and
``bench/fullscale_metrics.csv`` (the 14 rows' metrics) in this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import monitor
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent
METRIC_COLUMNS = ["f1_train_test", "f1_micro", "f1_macro", "accuracy_keras",
                  "accuracy_labelwise", "accuracy_exact", "map", "train_loss", "test_loss",
                  "train_f1_micro", "retrieval_p10", "n_train", "n_test"]


def table_rows() -> list[dict]:
    """The paper's rows g1..g14 as ``{row, labels, k, lr}``."""
    sys.path.insert(0, str(REPO))
    from fashiondvc.paper import paper_table

    table = paper_table()
    return [{"row": r.row, "labels": r.labels, "k": float(r.k), "lr": float(r.lr)}
            for r in table.itertuples()]


def environment(dest: Path) -> dict:
    """Environment for DVC in the clone: the venv first, and the clone's own package.

    The package is installed editable from the main checkout; PYTHONPATH makes the stages
    import the clone's committed copy instead, so edits in progress there cannot leak in.
    """
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(dest)
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "fullscale")
    env.setdefault("GIT_AUTHOR_EMAIL", "fullscale@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "fullscale")
    env.setdefault("GIT_COMMITTER_EMAIL", "fullscale@localhost")
    return env


def prepare(dest: Path, archive: Path, args: argparse.Namespace, env: dict) -> str:
    """Clone, write the full-scale params, commit; return the baseline commit."""
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    params_path = dest / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"]["archive"] = str(archive)
    params["model"]["weights"] = args.weights
    params["model"]["frozen_convs"] = args.frozen_convs
    params["train"]["epochs"] = args.epochs
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-C", str(dest)]
    subprocess.run([*git, "commit", "-qam", "full-scale settings"], check=True, env=env)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def exp_command(row: dict) -> list[str]:
    return ["dvc", "exp", "run", "-n", row["row"], "-S", f"labels={row['labels']}",
            "-S", f"k={row['k']:g}", "-S", f"lr={row['lr']:g}", "evaluate"]


def collect_metrics(dest: Path, env: dict) -> list[dict]:
    """The finished experiments' params and metrics, one dict per table row."""
    done = subprocess.run(["dvc", "exp", "show", "--json"], cwd=dest, env=env, check=True,
                          capture_output=True, text=True)
    (BENCH / "fullscale_exp_show.json").write_text(done.stdout)
    rows = []
    for baseline in json.loads(done.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = data["params"]["params.yaml"]["data"]
                metrics = data["metrics"]["metrics/metrics.json"]["data"]
                rows.append({"row": rev.get("name") or exp.get("name"),
                             "labels": params["labels"], "k": params["k"], "lr": params["lr"],
                             "epochs": params["train"]["epochs"],
                             **{c: metrics.get(c) for c in METRIC_COLUMNS}})
    return sorted(rows, key=lambda r: int(str(r["row"]).lstrip("g") or 0))


def write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", required=True, type=Path)
    parser.add_argument("--dest", type=Path, default=Path("/tmp/fullscale"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--frozen-convs", type=int, default=13)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--rows", nargs="*", help="only these rows (default: g1..g14)")
    parser.add_argument("--index", action="store_true",
                        help="afterwards, also time the search index stage (not in the table)")
    args = parser.parse_args()
    archive = args.archive.resolve()
    env = environment(args.dest)
    rows = [r for r in table_rows() if not args.rows or r["row"] in args.rows]
    report = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "archive": str(archive), "epochs": args.epochs, "weights": args.weights,
              "frozen_convs": args.frozen_convs, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = BENCH / "fullscale.json"
    log_path = args.dest.with_suffix(".log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        report["baseline"] = prepare(args.dest, archive, args, env)
        report["repro"] = monitor.run(["dvc", "repro", "evaluate"], cwd=args.dest, env=env,
                                      log=log).summary()
        subprocess.run(["git", "-C", str(args.dest), "commit", "-qam", "dvc.lock of the repro"],
                       env=env, check=False)
        report["experiments"] = {}
        for row in rows:
            stats = monitor.run(exp_command(row), cwd=args.dest, env=env, log=log)
            report["experiments"][row["row"]] = stats.summary()
            report["total_seconds"] = round(time.perf_counter() - start, 1)
            out.write_text(json.dumps(report, indent=2) + "\n")
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write_text(json.dumps(report, indent=2) + "\n")
        write_csv(collect_metrics(args.dest, env), BENCH / "fullscale_metrics.csv")
        print(f"full-scale table: {report['total_seconds'] / 60:.1f} min; see {out}")
        if args.index:  # the search index stage, outside the table: timed on its own
            report["index"] = monitor.run(["dvc", "repro", "index"], cwd=args.dest, env=env,
                                          log=log).summary()
            out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
