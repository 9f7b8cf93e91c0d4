"""Stage evaluate: trained network + stored features -> metrics/, PNG plots, one MLflow run.

MLflow (`fashiondvc.tracking`, `fashiondvc.mlmodel`) only observes: it writes nothing DVC tracks.
"""

import json
import sys
from pathlib import Path

import pandas as pd

from fashiondvc import mlmodel, tracking
from fashiondvc.errors import run_main
from fashiondvc.evaluate import run_evaluation
from fashiondvc.params import load_params


def main() -> None:
    labels_csv, split_csv, features_dir, model_path, history_csv, out_dir = sys.argv[1:7]
    params = load_params()
    try:
        headline = run_evaluation(params, labels_csv, split_csv, features_dir, model_path,
                                  history_csv, out_dir)
    except BaseException as exc:  # the run that train opened ends FAILED, not RUNNING
        tracking.fail_evaluation(params.flat(), model_path, exc)
        raise
    print(json.dumps(headline, indent=2))
    manifest = json.loads((Path(labels_csv).parent / "manifest.json").read_text())
    # ends the run train opened (or a fresh one when train came from DVC's run cache)
    tracking.log_evaluation(
        params.flat(), pd.read_csv(history_csv).to_dict("records"), headline,
        tracking.stage_artifacts(out_dir), manifest["archive_sha256"], model_path,
        lambda run: mlmodel.log_model(run, model_path, manifest["archive_sha256"],
                                      params.evaluate.tta, params.search.embedding))


if __name__ == "__main__":
    run_main(main)
