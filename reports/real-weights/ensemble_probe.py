"""Does an ensemble of training seeds pay for its cost? Mean probabilities of N finished runs.

Each named DVC experiment's ``models/net.pt`` and ``data/split.csv`` are read from the DVC cache
through the experiment's ``dvc.lock`` (no checkout); the stored features are the workspace's
``data/features`` (the experiments' own: same extractor, checked). Validation mAP and micro-F1
(thresholds tuned on validation) of each run alone and of the mean of their probabilities, then
the same on test, which is read only after the choice. Run from the repository root::

    python reports/real-weights/ensemble_probe.py [--tta flip] beyond-attrs20-seed0 \
        beyond-attrs20-seed1 beyond-attrs20-seed2 > reports/real-weights/ensemble_attrs20.md
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from fashiondvc import metrics
from fashiondvc.net import load_net
from fashiondvc.rows import load_splits, scores

CACHE = Path(".dvc/cache/files/md5")


def cached(experiment: str, path: str) -> Path:
    """The cache file of output ``path`` as the experiment's ``dvc.lock`` records it."""
    ref = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                         capture_output=True, text=True, check=True).stdout.split()
    matches = [r for r in ref if r.rsplit("/", 1)[-1] == experiment]
    if not matches:
        sys.exit(f"ensemble_probe: no experiment {experiment!r}")
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{matches[0]}:dvc.lock"],
                                         capture_output=True, text=True, check=True).stdout)
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return CACHE / out["md5"][:2] / out["md5"][2:]
    sys.exit(f"ensemble_probe: {experiment}'s dvc.lock has no {path}")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--tta", choices=("none", "flip"), default="none")
    args = parser.parse_args()
    names, tta = args.experiments, args.tta
    runs = []
    for name in names:
        net, config = load_net(cached(name, "models/net.pt"))
        data = load_splits("data/ingested/labels.csv", cached(name, "data/split.csv"),
                           "data/features", config.labels, config.inputs,
                           extractor=config.extractor, mirror=tta == "flip")
        runs.append((name, net, data))
    data = runs[0][2]
    y, m = data.targets, data.mask.astype(bool)
    probs = {}
    start = time.perf_counter()
    for name, net, run_data in runs:
        assert np.array_equal(run_data.val_rows, data.val_rows), "runs differ in their split"
        rows = np.concatenate([data.val_rows, data.test_rows])
        p, _ = scores(net, run_data, rows, torch.device("cpu"), tta=tta)
        probs[name] = p
    seconds = (time.perf_counter() - start) / len(runs)
    n_val = len(data.val_rows)
    probs["mean of all"] = np.mean(list(probs.values()), axis=0)

    print(f"{len(names)} runs: {', '.join(names)}; head pass over {len(rows)} rows "
          f"{seconds:.1f} s per run\n")
    print("| model | val mAP | val micro-F1 (tuned) | test mAP | test micro-F1 (tuned on val) |")
    print("|---|---|---|---|---|")
    val, test = data.val_rows, data.test_rows
    for name, p in probs.items():
        cut = metrics.tune_thresholds(y[val], p[:n_val], m[val])
        print(f"| {name} | {metrics.mean_average_precision(y[val], p[:n_val], m[val]):.3f} | "
              f"{metrics.micro_f1(y[val], p[:n_val] >= cut, m[val]):.3f} | "
              f"{metrics.mean_average_precision(y[test], p[n_val:], m[test]):.3f} | "
              f"{metrics.micro_f1(y[test], p[n_val:] >= cut, m[test]):.3f} |")


if __name__ == "__main__":
    main()
