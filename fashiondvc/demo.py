"""The offline demo: the real DVC pipeline on a generated sample, as a temporary experiment.

It runs ``dvc exp run --temp`` with overrides (sample archive, random weights, small images), so
the user's ``params.yaml`` and workspace stay untouched while the run shows up in
``dvc exp show`` and in the MLflow store like any other experiment.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from fashiondvc.errors import FashionError
from fashiondvc.io import sha256_file
from fashiondvc.sample import make_sample_archive

#: Overrides that make the pipeline run in well under 5 minutes on 2 CPU cores, offline.
DEMO_OVERRIDES = {
    "labels": "colors11",
    "k": 2,
    "lr": 0.003,
    "model.weights": "random",
    "model.frozen_convs": 13,
    "model.hidden": 64,
    "augment.copies": 2,
    "augment.image_size": 64,
    "train.epochs": 15,
    "train.batch_size": 32,
    "featurize.workers": 0,
}


def find_repo(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding ``dvc.yaml`` and ``.dvc/``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() and (folder / ".dvc").is_dir():
            return folder
    raise FashionError(f"{here} is not inside a fashiondvc checkout (no dvc.yaml and .dvc/)")


def demo_command(archive: Path, sha256: str, name: str) -> list[str]:
    overrides = {**DEMO_OVERRIDES, "data.archive": str(archive), "data.sha256": sha256}
    command = ["dvc", "exp", "run", "--temp", "-n", name]
    for key, value in overrides.items():
        command += ["-S", f"{key}={value}"]
    return command


def run_demo(photos: int = 120, seed: int = 0) -> int:
    """Generate the sample, run the pipeline on it, print its metrics and where to look next."""
    repo = find_repo()
    archive = make_sample_archive(repo / "data" / "demo" / "ClothingAttributeDataset-sample.zip",
                                  n_images=photos, seed=seed)
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    command = demo_command(archive.resolve(), sha256_file(archive), name)
    print(f"demo: {photos} generated photos in {archive.relative_to(repo)}; running:\n  "
          + " ".join(command), flush=True)
    start = time.perf_counter()
    code = run_once_each_error(command, repo)
    if code != 0:  # the stage's own error line and DVC's are above
        raise SystemExit(code)
    metrics = exp_metrics(repo, name)
    print(f"\ndemo: finished in {time.perf_counter() - start:.0f}s. Metrics of {name} "
          "(random weights on generated photos: a smoke test, not a result):")
    for key, value in metrics.items():
        print(f"  {key:20s} {value:.4f}" if isinstance(value, float) else f"  {key:20s} {value}")
    print("\nNext:\n"
          "  dvc exp show --only-changed                 compare with other experiments\n"
          f"  dvc exp apply {name}           bring its outputs into the workspace\n"
          "  mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1\n"
          "                                              per-epoch curves in the MLflow UI\n"
          "  dvc repro                                   the real run (see README)")
    return 0


#: DVC's warning, once per output, when ``dvc exp run --temp`` starts from a workspace without
#: a dvc.lock entry for it (a fresh clone): nothing a user can act on.
NO_HASH = re.compile(rb"^WARNING: No file hash info found for .* It won't be created\.\r?\n?$")


def run_once_each_error(command: list[str], cwd: Path) -> int:
    """Run ``command``, passing its stderr through line by line but each ``ERROR:`` line once
    and none of `NO_HASH`.

    ``dvc exp run --temp`` logs a failed stage's ``ERROR: failed to reproduce ...`` twice (from
    its temporary workspace, then again from the experiment); the stage's own error line is
    above it. Returns the exit code. (Stages then see a pipe, not a terminal: their progress
    comes as a line every few percent, `fashiondvc.progress`.)
    """
    seen: set[bytes] = set()
    with subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE) as process:
        for line in process.stderr:
            if NO_HASH.match(line):
                continue
            if line.startswith(b"ERROR:"):
                if line in seen:
                    continue
                seen.add(line)
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
    return process.returncode


def exp_metrics(repo: Path, name: str) -> dict:
    """The metrics.json of experiment ``name``, read from its git ref."""
    found = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True,
                           text=True, check=False)
    try:
        rows = json.loads(found.stdout)
    except json.JSONDecodeError:
        return {}
    for row in rows:
        for exp in row.get("experiments") or []:
            if exp.get("name") == name:
                for revision in exp.get("revs", []):
                    data = (revision.get("data") or {}).get("metrics", {})
                    if "metrics/metrics.json" in data:
                        return data["metrics/metrics.json"]["data"]
    print(f"demo: could not read the metrics of {name} from dvc exp show", file=sys.stderr)
    return {}
