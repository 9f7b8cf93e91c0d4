"""Issue 14 item 1: an untargeted ``dvc exp run -S k=5`` after a full run, as a fraction of it.

    .venv/bin/python bench/experiment_cost.py --archive /path/to/ClothingAttributeDataset.zip \
        [--weights imagenet|random|PATH] [--frozen-convs 13] [--epochs 10]

In a scratch clone of this checkout (`fullscale.prepare`: absolute archive path, the weights,
``model.frozen_convs`` and ``train.epochs`` committed there; a fresh, empty DVC cache), times

1. ``dvc repro``: every stage, nothing cached (the full run), then
2. ``dvc exp run -S k=5``: untargeted, as a user types it; DVC runs whatever is stale,

each with the seconds of every stage it ran (`monitor`). Prints the stages the experiment ran
and its wall time as a fraction of the full run, and writes
``bench/experiment-cost-<frozen_convs>.json``. Both commands run in one invocation, one after
the other, on the same machine, so the fraction is a side-by-side figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fullscale
import machine
import monitor

BENCH = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", required=True, type=Path)
    parser.add_argument("--dest", type=Path, default=Path("/tmp/experiment-cost"))
    parser.add_argument("--weights", default="imagenet",
                        help="model.weights in the clone (a path is made absolute)")
    parser.add_argument("--frozen-convs", type=int, default=13)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if Path(args.weights).is_file():
        args.weights = str(Path(args.weights).resolve())
    env = fullscale.environment(args.dest)
    out = args.out or BENCH / f"experiment-cost-{args.frozen_convs}.json"
    report = {"machine": machine.describe(), "weights": args.weights,
              "frozen_convs": args.frozen_convs, "epochs": args.epochs,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["commit"] = fullscale.prepare(args.dest, args.archive.resolve(), args, env)
    log_path = args.dest.with_suffix(".log")
    with open(log_path, "w") as log:
        for key, command in (("full_run", ["dvc", "repro"]),
                             ("experiment", ["dvc", "exp", "run", "-S", "k=5"])):
            stats = monitor.run(command, cwd=args.dest, env=env, log=log)
            report[key] = stats.summary()
            if stats.returncode:
                raise SystemExit(f"{' '.join(command)} failed (exit {stats.returncode}); "
                                 f"see {log_path}")
    full, experiment = report["full_run"]["seconds"], report["experiment"]["seconds"]
    report["fraction"] = round(experiment / full, 4)
    report["experiment_stages"] = sorted(report["experiment"]["stages"])
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"full run {full:.0f} s; dvc exp run -S k=5: {experiment:.0f} s "
          f"({', '.join(report['experiment_stages'])}) = {report['fraction']:.1%} of it; {out}")


if __name__ == "__main__":
    main()
