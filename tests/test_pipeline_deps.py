"""dvc.yaml's code deps equal each stage script's import closure inside fashiondvc/.

A stage whose code changed must rerun: if a module a stage imports (directly, through another
module, or inside a function) is missing from its deps, DVC keeps a stale result; one listed but
not imported reruns the stage for nothing.

The only exceptions are the modules in `OUTPUT_NEUTRAL`: they observe a stage (MLflow tracking,
progress lines) and cannot change a byte of what it writes, which tests/test_cache_lines.py
shows. The closure neither lists them nor follows their imports.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

#: Modules that cannot change any stage's outputs, each with the test that shows it.
OUTPUT_NEUTRAL = {
    # MLflow runs, params, metrics and the logged model live outside DVC's outputs:
    # test_cache_lines.py::test_train_outputs_are_byte_identical_with_tracking_on_and_off
    "fashiondvc/tracking.py",
    "fashiondvc/mlmodel.py",
    # progress lines on stderr only:
    # test_cache_lines.py::test_featurize_outputs_are_byte_identical_with_progress_on_and_off
    "fashiondvc/progress.py",
}


def imported_modules(path: Path) -> set[str]:
    """Every ``fashiondvc...`` module a file imports, at any nesting level."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "fashiondvc"}


def module_file(name: str) -> Path | None:
    """The file of module ``name`` inside the repository, or None for a non-module name."""
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"),
                      ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def import_closure(script: Path) -> set[str]:
    """Repository-relative paths of ``script`` and every fashiondvc file it reaches."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen or path.relative_to(ROOT).as_posix() in OUTPUT_NEUTRAL:
            continue
        seen.add(path)
        for name in imported_modules(path):
            # importing fashiondvc.x runs fashiondvc/__init__.py first
            for prefix in (".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)):
                target = module_file(prefix)
                if target is not None:
                    todo.append(target)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.endswith(".py")}


def test_every_stage_lists_exactly_its_import_closure():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        script = ROOT / "stages" / f"{name}.py"
        # the module form imports fashiondvc from the checkout that runs (a queued or --temp
        # experiment's copy), not from wherever the package was installed in editable mode
        assert stage["cmd"].startswith(f"python -m stages.{name} "), f"{name}: runs another script"
        expected, listed = import_closure(script), code_deps(stage)
        if expected != listed:
            problems.append(f"{name}: missing {sorted(expected - listed)}, "
                            f"extra {sorted(listed - expected)}")
    assert not problems, "dvc.yaml code deps drifted from imports:\n" + "\n".join(problems)


def test_closure_follows_function_level_and_transitive_imports(tmp_path, monkeypatch):
    # the closure must see an import inside a function two modules away
    closure = import_closure(ROOT / "stages" / "featurize.py")
    assert "fashiondvc/features.py" in closure  # imported at top level
    assert "fashiondvc/backbones.py" in closure  # through features.py
    assert "fashiondvc/store.py" in closure  # inside a function of features.py
    assert "fashiondvc/__init__.py" in closure
    assert "fashiondvc/dataset.py" not in closure  # featurize never reads the archive


def test_stage_commands_run_the_code_of_the_checkout_they_run_in(tmp_path):
    # A queued or --temp experiment runs in a copy of the repository; with `python stages/x.py`
    # Python would import fashiondvc from the editable install (the user's workspace, maybe
    # edited since), while DVC hashed the copy's files: a cached result from other code.
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copytree(ROOT / "fashiondvc", tmp_path / "fashiondvc")
    with open(tmp_path / "fashiondvc" / "__init__.py", "a") as init:
        init.write("\nraise SystemExit('fashiondvc imported from the copy')\n")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("inputs", "train"):
        argv = shlex.split(stages[name]["cmd"])
        assert argv[0] == "python"
        done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert "fashiondvc imported from the copy" in done.stderr, (name, done.stderr[-500:])
