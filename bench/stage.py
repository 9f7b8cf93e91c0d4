"""Time one pipeline stage at full scale with this checkout's code, and its peak memory.

    .venv/bin/python bench/stage.py featurize --repo /tmp/fullscale

Runs ``stages/<stage>.py`` in a DVC checkout that already holds the stage's inputs (e.g. the
scratch clone of bench/fullscale.py), importing the package from this checkout (PYTHONPATH),
and writing outputs to a scratch folder, never over the checkout's tracked outputs. Polls the
process tree like bench/fullscale.py and writes ``bench/stage-<stage>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import monitor

BENCH = Path(__file__).resolve().parent

COMMANDS = {
    "featurize": ["stages/featurize.py", "data/augmented", "{out}/features"],
    "index": ["stages/index.py", "models/net.pt", "data/ingested", "data/split.csv",
              "data/features", "{out}/index"],
    "train": ["stages/train.py", "data/ingested/labels.csv", "data/split.csv", "data/features",
              "{out}/net.pt", "{out}/history.csv"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=sorted(COMMANDS))
    parser.add_argument("--repo", type=Path, default=Path("/tmp/fullscale"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/fashiondvc-stage"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    command = [sys.executable, *(a.format(out=args.out) for a in COMMANDS[args.stage])]
    stats = monitor.run(command, cwd=args.repo, env=env)
    summary = stats.summary()
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (BENCH / f"stage-{args.stage}.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
