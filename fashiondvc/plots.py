"""PNG versions of the pipeline's plots, for readers without the Vega CDN ``dvc plots`` uses.

The evaluate stage draws one run's plots (:func:`draw_all`); ``fashiondvc plots compare``
draws several experiments or commits over each other (:func:`compare`), reading their files
through DVC.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fashiondvc.errors import FashionError  # noqa: E402
from fashiondvc.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_history(history: pd.DataFrame, path: str | os.PathLike) -> None:
    """Train/test loss and test mAP per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    left.plot(history["epoch"], history["test_loss"], marker="o", label="test")
    left.set(xlabel="epoch", ylabel="weighted BCE", title="Loss")
    left.legend()
    right.plot(history["epoch"], history["test_map"], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="mAP", title="Test mAP", ylim=(0, 1))
    _save(fig, path)


def plot_per_attribute(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Test F1 per attribute, as horizontal bars."""
    table = table.sort_values("f1")
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(table) + 1))
    ax.barh(table["attribute"], table["f1"], color="tab:blue")
    ax.set(xlabel="test F1", xlim=(0, 1), title="F1 per attribute")
    _save(fig, path)


def plot_pr_curves(curves: pd.DataFrame, path: str | os.PathLike) -> None:
    """Precision-recall curve per attribute on the test set."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, group in curves.groupby("attribute", sort=False):
        ax.plot(group["recall"], group["precision"], label=name, linewidth=1)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall (test)")
    if len(curves):
        ax.legend(fontsize=6, ncol=2)
    _save(fig, path)


def png_paths(folder: str | os.PathLike) -> dict[str, Path]:
    folder = Path(folder)
    return {name: folder / f"{name}.png" for name in ("history", "per_attribute", "pr_curves")}


def draw_all(history: pd.DataFrame, per_attribute: pd.DataFrame, curves: pd.DataFrame,
             folder: str | os.PathLike) -> list[Path]:
    """The three PNG plots of an evaluation into ``folder``; returns their paths."""
    paths = png_paths(folder)
    plot_history(history, paths["history"])
    plot_per_attribute(per_attribute, paths["per_attribute"])
    plot_pr_curves(curves, paths["pr_curves"])
    return list(paths.values())


HISTORY = "metrics/history.csv"
PER_ATTRIBUTE = "metrics/per_attribute.csv"
WORKSPACE = "workspace"
"""The revision name that means the working tree, as ``dvc exp show`` calls it."""


def read_at(path: str, rev: str, repo: str | os.PathLike | None = None) -> pd.DataFrame:
    """A CSV file of the DVC project ``repo`` as it is at ``rev``.

    Parameters
    ----------
    path : str
        Relative to the project root, e.g. ``metrics/history.csv``.
    rev : str
        A DVC experiment name, a commit, branch or tag, or ``workspace`` (the working tree).
    repo : path, optional
        The DVC project (a git repository); None: the one around the working directory.

    Returns
    -------
    DataFrame

    Raises
    ------
    FashionError
        If ``rev`` is unknown, or ``path`` is not there at ``rev``, or is not a CSV table.
    """
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        with dvc.api.open(path, repo=None if repo is None else str(repo),
                          rev=None if rev == WORKSPACE else rev) as f:
            return pd.read_csv(f)
    except (DvcException, FileNotFoundError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FashionError(f"{path} at {rev}: {reason}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FashionError(f"{path} at {rev}: not a CSV table ({exc})") from None


def _read_columns(path: str, rev: str, repo: str | os.PathLike | None,
                  columns: Sequence[str]) -> pd.DataFrame:
    table = read_at(path, rev, repo)
    missing = [c for c in columns if c not in table]
    if missing:
        raise FashionError(f"{path} at {rev}: no column {', '.join(missing)}")
    return table


def _colours(n: int) -> list:
    return [plt.get_cmap("tab10")(i % 10) for i in range(n)]


def plot_compare_history(histories: Mapping[str, pd.DataFrame], path: str | os.PathLike) -> None:
    """Per-epoch curves of several runs over each other.

    Loss (train dashed, test solid), test mAP and, when a run has validation photos,
    validation mAP; one colour per run, labelled with its name (the keys of ``histories``).
    Each table holds ``epoch``, ``train_loss``, ``test_loss``, ``test_map`` (``val_map``
    optional), one row per epoch.
    """
    with_map = [name for name, h in histories.items() if "val_map" in h]
    panels = 3 if with_map else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8))
    for (name, history), colour in zip(histories.items(), _colours(len(histories)), strict=True):
        axes[0].plot(history["epoch"], history["train_loss"], "--", color=colour,
                     label=f"{name} train")
        axes[0].plot(history["epoch"], history["test_loss"], "-o", color=colour, markersize=3,
                     label=f"{name} test")
        axes[1].plot(history["epoch"], history["test_map"], "-o", color=colour, markersize=3,
                     label=name)
        if name in with_map:
            axes[2].plot(history["epoch"], history["val_map"], "-o", color=colour,
                         markersize=3, label=name)
    axes[0].set(xlabel="epoch", ylabel="loss", title="Loss (dashed: train)")
    axes[1].set(xlabel="epoch", ylabel="mAP", title="Test mAP", ylim=(0, 1))
    if with_map:
        axes[2].set(xlabel="epoch", ylabel="mAP", title="Validation mAP", ylim=(0, 1))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_compare_per_attribute(tables: Mapping[str, pd.DataFrame],
                               path: str | os.PathLike) -> None:
    """Test F1 per attribute of several runs, as grouped horizontal bars.

    Attributes are the union over the runs, ordered by the first run's F1; an attribute a run
    does not predict (or did not evaluate) has no bar for it. Each table holds ``attribute``
    and ``f1``.
    """
    f1 = pd.concat({name: t.set_index("attribute")["f1"] for name, t in tables.items()},
                   axis=1)
    f1 = f1.loc[f1.iloc[:, 0].sort_values(na_position="first").index]
    rows, runs = len(f1), len(f1.columns)
    height = 0.8 / runs
    fig, ax = plt.subplots(figsize=(7, (0.25 + 0.12 * runs) * rows + 1.2))
    for i, (name, colour) in enumerate(zip(f1.columns, _colours(runs), strict=True)):
        positions = [r + (runs - 1 - i) * height - 0.4 + height / 2 for r in range(rows)]
        ax.barh(positions, f1[name].fillna(0).to_numpy(), height=height, color=colour,
                label=name)
    ax.set_yticks(range(rows), f1.index)
    ax.set(xlabel="test F1", xlim=(0, 1), title="F1 per attribute")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def compare(revs: Sequence[str], out: str | os.PathLike,
            repo: str | os.PathLike | None = None) -> list[Path]:
    """Draw the runs at ``revs`` over each other, as PNG files in ``out``.

    ``compare_history.png`` holds the per-epoch curves, ``compare_per_attribute.png`` the F1
    bars. The files are read through DVC, so experiments need not be applied.

    Parameters
    ----------
    revs : sequence of str
        Two or more DVC experiment names, commits, branches, tags or ``workspace``; each must
        hold ``metrics/history.csv`` and ``metrics/per_attribute.csv``.
    out : path
        Output folder, created if needed.
    repo : path, optional
        The DVC project; None: the one around the working directory.

    Returns
    -------
    list of Path
        The two PNG files.

    Raises
    ------
    FashionError
        Fewer than two revisions, a revision named twice, or a file missing at a revision
        or lacking a column.
    """
    if len(revs) < 2:
        raise FashionError("plots compare: name at least two experiments or revisions")
    if len(set(revs)) != len(revs):
        raise FashionError(f"plots compare: a revision is named twice ({' '.join(revs)})")
    histories = {rev: _read_columns(HISTORY, rev, repo, ("epoch", "train_loss", "test_loss",
                                                          "test_map")) for rev in revs}
    tables = {rev: _read_columns(PER_ATTRIBUTE, rev, repo, ("attribute", "f1")) for rev in revs}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compare_history.png", out / "compare_per_attribute.png"]
    plot_compare_history(histories, paths[0])
    plot_compare_per_attribute(tables, paths[1])
    return paths
