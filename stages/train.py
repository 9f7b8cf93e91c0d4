"""Stage train: stored features -> trained head and trainable convs (models/net.pt, history)."""

import sys
from pathlib import Path

import pandas as pd

from fashiondvc import model as model_module
from fashiondvc import train as train_module
from fashiondvc.dataset import resolve_label_set
from fashiondvc.errors import run_main
from fashiondvc.io import file_identity, sha256_file, write_csv
from fashiondvc.model import build_net, save_net
from fashiondvc.params import load_params
from fashiondvc.train import TrainConfig, fingerprint, fit, load_splits


def main() -> None:
    labels_csv, split_csv, features_dir, model_path, history_csv = sys.argv[1:6]
    params = load_params()
    model, train = params["model"], params["train"]
    names = resolve_label_set(params["labels"])
    features_npy = Path(features_dir) / "features.npy"
    data = load_splits(labels_csv, split_csv, features_npy, names)
    image_size = params["augment"]["image_size"]
    net = build_net(model["weights"], model["frozen_convs"], image_size, model["hidden"],
                    len(names), model["dropout"], seed=train["seed"])
    config = TrainConfig(k=params["k"], lr=params["lr"], epochs=train["epochs"],
                         batch_size=train["batch_size"], optimizer=train["optimizer"],
                         weight_decay=train["weight_decay"], seed=train["seed"],
                         device=train["device"], precision=train["precision"],
                         threshold=params["evaluate"]["threshold"])
    # everything that shapes the history: a checkpoint resumes only an identical run
    run_id = fingerprint(labels=names, k=params["k"], lr=params["lr"], model=model, train=train,
                         threshold=params["evaluate"]["threshold"], image_size=image_size,
                         split=sha256_file(split_csv), features=file_identity(features_npy),
                         labels_csv=sha256_file(labels_csv),
                         code=[sha256_file(f) for f in (__file__, train_module.__file__,
                                                        model_module.__file__)])
    checkpoint = Path(".checkpoints") / f"train-{run_id}.pt"
    history = fit(net, data.subset(data.train_rows), data.subset(data.test_rows), config,
                  checkpoint=checkpoint)
    save_net(net, model_path, {"labels": names, "image_size": image_size,
                               "weights": model["weights"],
                               "frozen_convs": model["frozen_convs"], "hidden": model["hidden"],
                               "dropout": model["dropout"]})
    write_csv(history_csv, pd.DataFrame(history))
    checkpoint.unlink(missing_ok=True)


if __name__ == "__main__":
    run_main(main)
