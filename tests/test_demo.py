"""`fashiondvc demo`, the README's first command, on a fresh repository."""

import json
import re
import time

import pytest
from conftest import BIN, make_repo, run
from test_pipeline import PROGRESS

from fashiondvc.demo import demo_command

#: The demo's settings, written out here rather than read from demo.py: offline (random
#: weights), 64 px images and 2 copies per photo (as the README says), a small network and a
#: few epochs (the README's 1-3 minutes).
EXPECTED = {"labels": "colors11", "k": "2", "lr": "0.003", "model.weights": "random",
            "model.frozen_convs": "13", "model.hidden": "64", "augment.copies": "2",
            "augment.image_size": "64", "train.epochs": "15", "train.batch_size": "32",
            "featurize.workers": "0"}


def test_demo_command_is_a_temp_experiment_with_every_override(tmp_path):
    command = demo_command(tmp_path / "a.zip", "f" * 64, "demo-x")
    assert command[:6] == ["dvc", "exp", "run", "--temp", "-n", "demo-x"]
    assert command[6::2] == ["-S"] * (len(EXPECTED) + 2)
    settings = dict(s.split("=", 1) for s in command[7::2])
    assert settings == {**EXPECTED, "data.archive": str(tmp_path / "a.zip"),
                        "data.sha256": "f" * 64}


def test_demo_settings_are_valid_parameters(tmp_path):
    """Applied to params.yaml as ``dvc exp run -S`` applies them (YAML values), the demo's
    settings pass validation: no renamed or removed key, no value out of range."""
    from conftest import PROJECT, set_params
    from ruamel.yaml import YAML

    from fashiondvc.params import load_params

    command = demo_command(tmp_path / "a.zip", "f" * 64, "demo-x")
    yaml = YAML(typ="safe", pure=True)
    overrides = {key: yaml.load(value) for key, value in
                 (s.split("=", 1) for s in command[7::2])}
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    set_params(tmp_path / "params.yaml", overrides)
    params = load_params(tmp_path / "params.yaml")
    assert (params.model.weights, params.model.frozen, params.augment.image_size) == (
        "random", 13, 64)
    assert params.data.archive == str(tmp_path / "a.zip")


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_leaves_params_untouched(tmp_path, sample_zip):
    repo = make_repo(tmp_path / "repo", sample_zip)
    params_before = (repo / "params.yaml").read_text()
    start = time.perf_counter()
    result = run([str(BIN / "fashiondvc"), "demo", "--photos", "16"], repo)
    print(f"demo --photos 16: {time.perf_counter() - start:.0f} s")
    assert "demo: finished" in result.stdout
    # every stderr line of the demo (all stages, evaluate's MLflow logging included) is the
    # project's own progress: no dependency warning, INFO line or traceback
    noise = [line for line in result.stderr.splitlines()
             if line.strip() and not re.match(PROGRESS, line.strip())]
    assert noise == [], "\n".join(noise[:20])
    assert "f1_micro" in result.stdout
    assert (repo / "params.yaml").read_text() == params_before
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    names = [e.get("name") for row in shown for e in (row.get("experiments") or [])]
    assert any(name and name.startswith("demo-") for name in names)


def test_a_failing_demo_says_it_once(tmp_path, sample_zip):
    """A bad parameter: the stage's one line and at most one DVC line (``dvc exp run --temp``
    printed its "ERROR: failed to reproduce" twice), and no traceback."""
    repo = make_repo(tmp_path / "repo", sample_zip, **{"data.on_corrupt": "maybe"})
    result = run([str(BIN / "fashiondvc"), "demo", "--photos", "8"], repo, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not re.match(PROGRESS, line.strip())]
    ours = [line for line in lines if line.startswith("error: ")]
    assert len(ours) == 1 and "data.on_corrupt" in ours[0], result.stderr
    assert len([line for line in lines if line.startswith("ERROR: ")]) <= 1, result.stderr
    assert len(lines) <= 2, result.stderr
