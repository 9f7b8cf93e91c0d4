"""`fashiondvc demo`, the README's first command, on a fresh repository."""

import json

import pytest
from conftest import BIN, make_repo, run

from fashiondvc.demo import DEMO_OVERRIDES, demo_command


def test_demo_command_is_a_temp_experiment_with_every_override(tmp_path):
    command = demo_command(tmp_path / "a.zip", "f" * 64, "demo-x")
    assert command[:6] == ["dvc", "exp", "run", "--temp", "-n", "demo-x"]
    settings = dict(s.split("=", 1) for s in command[7::2])
    assert settings["data.archive"] == str(tmp_path / "a.zip")
    assert settings["data.sha256"] == "f" * 64
    for key, value in DEMO_OVERRIDES.items():
        assert settings[key] == str(value)


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_leaves_params_untouched(tmp_path, sample_zip):
    repo = make_repo(tmp_path / "repo", sample_zip)
    params_before = (repo / "params.yaml").read_text()
    result = run([str(BIN / "fashiondvc"), "demo", "--photos", "16"], repo)
    assert "demo: finished" in result.stdout
    assert "f1_micro" in result.stdout
    assert (repo / "params.yaml").read_text() == params_before
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    names = [e.get("name") for row in shown for e in (row.get("experiments") or [])]
    assert any(name and name.startswith("demo-") for name in names)
