"""Stage evaluate: trained network + stored features -> metrics/, PNG plots, one MLflow run."""

import json
import sys
from pathlib import Path

import pandas as pd

from fashiondvc import mlmodel, plots, tracking
from fashiondvc.errors import run_main
from fashiondvc.evaluate import evaluate
from fashiondvc.io import write_csv, write_json
from fashiondvc.net import load_net
from fashiondvc.params import flatten, load_params
from fashiondvc.retrieval import retrieval_metrics
from fashiondvc.train import TrainConfig, load_splits


def main() -> None:
    labels_csv, split_csv, features_dir, model_path, history_csv, out_dir = sys.argv[1:7]
    out = Path(out_dir)
    params = load_params()
    net, config = load_net(model_path)
    data = load_splits(labels_csv, split_csv, features_dir, config["labels"],
                       side=config.get("head") == "multiscale")
    result = evaluate(net, data, config["labels"], TrainConfig(**config["train"]),
                      thresholds=params["evaluate"]["thresholds"])
    manifest = json.loads((Path(labels_csv).parent / "manifest.json").read_text())
    headline = {**result.headline, **retrieval_metrics(net, data, split_csv),
                "n_skipped": manifest["n_skipped"]}
    write_json(out / "metrics.json", headline)
    write_csv(out / "per_attribute.csv", result.per_attribute)
    write_csv(out / "pr_curves.csv", result.pr_curves)
    history = pd.read_csv(history_csv)
    plots.draw_all(history, result.per_attribute, result.pr_curves, out / "plots")
    print(json.dumps(headline, indent=2))
    # ends the run train opened (or a fresh one when train came from DVC's run cache)
    tracking.log_evaluation(
        flatten(params), history.to_dict("records"), headline,
        tracking.stage_artifacts(out), manifest["archive_sha256"], model_path,
        lambda run: mlmodel.log_model(run, model_path, params["featurize"]["precision"],
                                      manifest["archive_sha256"]))


if __name__ == "__main__":
    run_main(main)
