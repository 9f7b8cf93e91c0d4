"""PNG versions of the pipeline's plots, for readers without the Vega CDN ``dvc plots`` uses."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fashiondvc.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_history(history: pd.DataFrame, path: str | os.PathLike) -> None:
    """Train/test loss and test F1 per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    left.plot(history["epoch"], history["test_loss"], marker="o", label="test")
    left.set(xlabel="epoch", ylabel="weighted BCE", title="Loss")
    left.legend()
    right.plot(history["epoch"], history["test_f1"], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="micro F1", title="Test F1", ylim=(0, 1))
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
