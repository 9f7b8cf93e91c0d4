"""Stage train: stored features -> trained layers and head (models/net.pt), history.csv.

MLflow tracking (`fashiondvc.tracking`) only observes: train's outputs are byte-identical with it
on or off (tests/test_cache_lines.py), so it is not a dependency of this stage.
"""

import sys

from fashiondvc import distributed, tracking
from fashiondvc.errors import run_main
from fashiondvc.params import load_params
from fashiondvc.train import train


def main() -> None:
    labels_csv, split_csv, features_dir, model_path, history_csv = sys.argv[1:6]
    params = load_params()
    distributed.launch(params.train)  # train.devices > 1: torchrun
    live = tracking.start_live_run(params.flat())  # rank 0 only; evaluate ends the run
    try:
        history = train(params, labels_csv, split_csv, features_dir, model_path, history_csv,
                        on_epoch=live.log_epoch if live else None)
    except BaseException as exc:  # any failure, Ctrl-C included, ends the run
        if live:
            live.fail(exc)
        raise
    if history is not None and live:
        live.handover(history, model_path)  # evaluate finds the run by the model's sha256


if __name__ == "__main__":
    run_main(main)
