"""``fashiondvc plots compare``: PNG curves and bars of several revisions, read through DVC."""

import sys
import textwrap

import numpy as np
import pytest
from conftest import PROJECT, run

from fashiondvc import plots
from fashiondvc.cli import main

MAKE = textwrap.dedent("""\
    import pathlib, yaml
    k = yaml.safe_load(open("params.yaml"))["k"]
    out = pathlib.Path("metrics")
    out.mkdir(exist_ok=True)
    rows = [f"{e},{k / e},{k / e + 0.5},{0.1 * e + 0.01 * k}" for e in (1, 2, 3)]
    (out / "history.csv").write_text("epoch,train_loss,test_loss,test_map\\n" + "\\n".join(rows))
    (out / "per_attribute.csv").write_text(f"attribute,f1\\nred,{0.1 * k}\\nblue,0.5\\n")
""")

STAGE = textwrap.dedent("""\
    stages:
      make:
        cmd: {python} make.py
        deps: [make.py]
        params: [k]
        outs:
          - metrics/history.csv:
              cache: false
          - metrics/per_attribute.csv:
              cache: false
""")


@pytest.fixture
def drawn(monkeypatch):
    """The data of every figure ``plots`` saves: {file name: [(label, y values)]}."""
    figures = {}
    save = plots._save

    def record(fig, path):
        lines = [(line.get_label(), list(line.get_ydata())) for ax in fig.axes
                 for line in ax.lines]
        bars = [(c.get_label(), [p.get_width() for p in c]) for ax in fig.axes
                for c in ax.containers]
        figures[path.name] = lines + bars
        save(fig, path)

    monkeypatch.setattr(plots, "_save", record)
    return figures


def dvc_project(root, k):
    root.mkdir()
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    (root / "make.py").write_text(MAKE)
    (root / "dvc.yaml").write_text(STAGE.format(python=sys.executable))
    (root / "params.yaml").write_text(f"k: {k}\n")
    return root


def commit_results(repo, k, message):
    (repo / "params.yaml").write_text(f"k: {k}\n")
    run([sys.executable, "make.py"], repo)
    run(["git", "add", "."], repo)
    run(["git", "commit", "-qm", message], repo)


def test_two_commits_drawn_over_each_other(tmp_path, drawn, monkeypatch, capsys):
    repo = dvc_project(tmp_path / "repo", k=1)
    commit_results(repo, 1, "k=1")
    commit_results(repo, 4, "k=4")
    monkeypatch.chdir(repo)
    main(["plots", "compare", "HEAD~1", "HEAD", "--out", str(tmp_path / "out")])
    assert "wrote" in capsys.readouterr().out
    for name in ("compare_history.png", "compare_per_attribute.png"):
        png = (tmp_path / "out" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    curves = dict(drawn["compare_history.png"])
    assert np.allclose(curves["HEAD~1 test"], [1.5, 1.0, 1 / 3 + 0.5])
    assert np.allclose(curves["HEAD test"], [4.5, 2.5, 4 / 3 + 0.5])
    assert np.allclose(curves["HEAD~1"], [0.11, 0.21, 0.31])  # test mAP
    assert np.allclose(curves["HEAD"], [0.14, 0.24, 0.34])
    bars = dict(drawn["compare_per_attribute.png"])  # attributes sorted by the first run's F1
    assert np.allclose(bars["HEAD~1"], [0.1, 0.5]) and np.allclose(bars["HEAD"], [0.4, 0.5])
    assert not (repo / "dvc_plots").exists()  # --out honoured


def test_an_unknown_revision_is_one_error_line(tmp_path, monkeypatch, capsys):
    repo = dvc_project(tmp_path / "repo", k=1)
    commit_results(repo, 1, "k=1")
    monkeypatch.chdir(repo)
    for argv in (["HEAD", "no-such-exp"], ["HEAD"], ["HEAD", "HEAD"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["plots", "compare", *argv, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 1
        error = capsys.readouterr().err
        assert error.startswith("error: ") and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_dvc_experiments_compared_without_applying_them(tmp_path, drawn, monkeypatch):
    repo = dvc_project(tmp_path / "repo", k=1)
    run(["dvc", "repro", "-q"], repo)
    run(["git", "add", "."], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    for name, k in (("low", 2), ("high", 3)):
        run(["dvc", "exp", "run", "-q", "-n", name, "-S", f"k={k}"], repo)
    run(["git", "checkout", "-q", "--", "."], repo)  # workspace back to the baseline
    monkeypatch.chdir(repo)
    main(["plots", "compare", "low", "high", "workspace", "--out", "dvc_plots/compare"])
    assert (repo / "dvc_plots" / "compare" / "compare_history.png").stat().st_size > 5000
    curves = dict(drawn["compare_history.png"])
    assert np.allclose(curves["low train"], [2, 1, 2 / 3])
    assert np.allclose(curves["high train"], [3, 1.5, 1])
    assert np.allclose(curves["workspace train"], [1, 0.5, 1 / 3])


def test_dvc_plots_output_is_git_ignored():
    # `dvc plots diff` writes dvc_plots/index.html; compare writes beside it by default
    assert run(["git", "check-ignore", "-q", "dvc_plots/index.html"], PROJECT).returncode == 0
