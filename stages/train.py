"""Stage train: stored features -> trained convs and head (models/net.pt), history.csv."""

import sys
from pathlib import Path

import pandas as pd

from fashiondvc import distributed, tracking
from fashiondvc.errors import run_main
from fashiondvc.io import write_csv
from fashiondvc.labels import resolve_label_set
from fashiondvc.net import save_net
from fashiondvc.params import flatten, load_params
from fashiondvc.train import build_run, fit, load_splits


def main() -> None:
    labels_csv, split_csv, features_dir, model_path, history_csv = sys.argv[1:6]
    params = load_params()
    distributed.launch(params["train"])  # train.devices > 1: torchrun
    names = resolve_label_set(params["labels"])
    data = load_splits(labels_csv, split_csv, features_dir, names,
                       side=params["model"]["head"] == "multiscale")
    run = build_run(params, data, names, inputs=[labels_csv, split_csv, features_dir])
    live = tracking.start_live_run(flatten(params))  # rank 0 only; evaluate ends the run
    history = fit(run.net, data.subset(data.train_rows), data.subset(data.test_rows),
                  run.config, val_set=data.subset(data.val_rows) if len(data.val_rows) else None,
                  checkpoint=Path(".checkpoints") / f"train-{run.id}.pt",
                  on_epoch=live.log_epoch if live else None)
    if not distributed.is_main():
        return  # rank 0 writes
    save_net(run.net, model_path, run.saved_config)
    write_csv(history_csv, pd.DataFrame(history))
    if live:
        live.handover(history, model_path)  # evaluate finds the run by the model's sha256
    (Path(".checkpoints") / f"train-{run.id}.pt").unlink(missing_ok=True)


if __name__ == "__main__":
    run_main(main)
