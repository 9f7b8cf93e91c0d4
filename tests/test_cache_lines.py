"""Cache lines follow the bytes: a stage reruns for what can change its outputs, and only that.

`dvc.yaml`'s code deps are the import closures (tests/test_pipeline_deps.py), less the modules
that only observe (`OUTPUT_NEUTRAL`): these tests pin where the lines run, and show that the
observers cannot change a byte of what a stage writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import run
from test_pipeline_deps import OUTPUT_NEUTRAL

PROJECT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
HEAVY = ("featurize", "train")
DATA_STAGES = ("ingest", "augment", "split")


def code_deps(stage: str) -> set[str]:
    return {d for d in STAGES[stage]["deps"] if d.endswith(".py")}


def test_tracking_progress_cli_and_web_code_is_no_dependency_of_training_or_featurizing():
    observers = OUTPUT_NEUTRAL | {f"fashiondvc/{m}.py" for m in
                                  ("cli", "web", "search", "demo", "paper", "plots")}
    for stage in HEAVY:
        assert not code_deps(stage) & observers, (stage, sorted(code_deps(stage) & observers))


def test_backbone_and_feature_code_reruns_featurize_onwards_and_never_the_data_stages():
    model_code = {"fashiondvc/backbones.py", "fashiondvc/features.py", "fashiondvc/config.py"}
    for stage in ("featurize", "train", "evaluate", "index"):
        assert model_code <= code_deps(stage), stage
    for stage in DATA_STAGES:
        assert not model_code & code_deps(stage), stage


def test_the_decision_threshold_is_no_training_input():
    train_params = STAGES["train"]["params"]
    assert not any(p in ("evaluate", "evaluate.threshold") for p in train_params)
    assert "evaluate" in STAGES["evaluate"]["params"]
    assert "evaluate.threshold" in STAGES["index"]["params"]


BLOCK_TORCH = """
import runpy, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} imported by a data stage")
sys.meta_path.insert(0, Refuse())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def test_ingest_augment_and_split_run_without_torch(pipeline_repo):
    for stage in DATA_STAGES:
        argv = STAGES[stage]["cmd"].split()[2:]  # python -m <module> args...
        done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *argv], cwd=pipeline_repo,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (stage, done.stderr[-2000:])
    assert (pipeline_repo / "data" / "split.csv").is_file()


def _status(repo: Path) -> set[str]:
    result = run(["dvc", "status", "--json"], repo)
    return set(json.loads(result.stdout or "{}"))


def test_dvc_reruns_exactly_the_stages_an_edit_can_change(reference_copy):
    repo = reference_copy
    assert _status(repo) <= {"inputs"}  # inputs is always_changed
    original = {p: (repo / p).read_text() for p in
                ("fashiondvc/tracking.py", "fashiondvc/progress.py", "fashiondvc/cli.py",
                 "fashiondvc/web.py", "fashiondvc/mlmodel.py", "fashiondvc/backbones.py",
                 "params.yaml")}

    def edit(path: str, text: str) -> None:
        (repo / path).write_text(original[path] + text)

    def restore() -> None:
        for path, text in original.items():
            (repo / path).write_text(text)

    for path in ("fashiondvc/tracking.py", "fashiondvc/progress.py", "fashiondvc/cli.py",
                 "fashiondvc/web.py", "fashiondvc/mlmodel.py"):
        edit(path, "\n# an edit that cannot change any output\n")
    assert not _status(repo) & {"ingest", "augment", "split", "featurize", "train"}
    restore()

    edit("fashiondvc/backbones.py", "\n# the backbone changed\n")
    assert {"featurize", "train", "evaluate", "index"} <= _status(repo)
    assert not _status(repo) & set(DATA_STAGES)
    restore()

    params = yaml.safe_load(original["params.yaml"])
    params["evaluate"]["threshold"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _status(repo)
    assert {"evaluate", "index"} <= changed
    assert "train" not in changed and "featurize" not in changed


def _train_in_process(repo: Path, out: Path, on_epoch=None) -> None:
    from fashiondvc.params import load_params
    from fashiondvc.train import train

    params = load_params(repo / "params.yaml")
    train(params, repo / "data/ingested/labels.csv", repo / "data/split.csv",
          repo / "data/features", out / "net.pt", out / "history.csv",
          checkpoint_dir=out / ".checkpoints", on_epoch=on_epoch)


def test_train_outputs_are_byte_identical_with_tracking_on_and_off(reference, tmp_path):
    # on: the train stage as DVC ran it, with its live MLflow run logging every epoch
    assert (reference / "mlflow.db").is_file()
    off = tmp_path / "off"
    _train_in_process(reference, off)  # no tracking at all
    for produced, tracked in (("net.pt", "models/net.pt"),
                              ("history.csv", "metrics/history.csv")):
        assert (off / produced).read_bytes() == (reference / tracked).read_bytes(), produced


def test_featurize_outputs_are_byte_identical_with_progress_on_and_off(reference, tmp_path):
    out = tmp_path / "features"
    env_args = {"env": {"TQDM_DISABLE": "1"}}  # the reference ran with progress lines on
    run([sys.executable, "-m", "stages.featurize", "data/augmented", str(out)], reference,
        **env_args)
    for name in ("trunk.npy", "side.npy", "colour.npy", "meta.json"):
        assert (out / name).read_bytes() == (reference / "data/features" / name).read_bytes()
