"""Stage evaluate: trained network + stored features -> metrics/, PNG plots, one MLflow run."""

import json
import os
import sys
from pathlib import Path

import pandas as pd

from fashiondvc import plots, tracking
from fashiondvc.errors import run_main
from fashiondvc.evaluate import evaluate
from fashiondvc.io import write_csv, write_json
from fashiondvc.model import load_net
from fashiondvc.params import flatten, load_params
from fashiondvc.search import retrieval_metrics
from fashiondvc.train import load_splits


def main() -> None:
    labels_csv, split_csv, features_dir, model_path, history_csv, out_dir = sys.argv[1:7]
    out = Path(out_dir)
    params = load_params()
    net, config = load_net(model_path)
    names = config["labels"]
    data = load_splits(labels_csv, split_csv, Path(features_dir) / "features.npy", names)
    result = evaluate(net, data, names, k=params["k"],
                      threshold=params["evaluate"]["threshold"],
                      batch_size=params["train"]["batch_size"], device=params["train"]["device"],
                      precision=params["train"]["precision"])
    manifest = json.loads((Path(labels_csv).parent / "manifest.json").read_text())
    headline = {**result.headline, **retrieval_metrics(net, data, split_csv),
                "n_skipped": manifest["n_skipped"]}
    write_json(out / "metrics.json", headline)
    write_csv(out / "per_attribute.csv", result.per_attribute)
    write_csv(out / "pr_curves.csv", result.pr_curves)
    history = pd.read_csv(history_csv)
    pngs = plots.png_paths(out / "plots")
    plots.plot_history(history, pngs["history"])
    plots.plot_per_attribute(result.per_attribute, pngs["per_attribute"])
    plots.plot_pr_curves(result.pr_curves, pngs["pr_curves"])
    print(json.dumps(headline, indent=2))
    tracking.log_pipeline_run(
        flatten(params), history.to_dict("records"), headline,
        artifacts=[out / "metrics.json", out / "per_attribute.csv", history_csv, out / "plots",
                   model_path],
        tags={"dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
              "dvc.baseline_rev": tracking.git_revision(),
              "dataset.sha256": manifest["archive_sha256"]})


if __name__ == "__main__":
    run_main(main)
