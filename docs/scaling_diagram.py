"""Draw docs/scaling.png: two clones of the project around the three shared pieces.

    python docs/scaling_diagram.py            # writes docs/scaling.png next to this script

Runs (MLflow server on PostgreSQL), artifacts (a DVC remote) and code (a git remote) sit in the
middle; a team member's machine on the left, a GPU machine training under torchrun on the
right. Matplotlib only (a project dependency), so no Graphviz install is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

#: Box colours by role: shared services, a team member's clone, compute.
SHARED, CLONE, COMPUTE, RANK = "#dbe9f6", "#eef5e4", "#fdf0dc", "#f8dcb4"
MONO = {"family": "monospace", "size": 8.2}


def box(ax, x: float, y: float, w: float, h: float, colour: str, title: str,
        lines: list[str], title_size: float = 10.5) -> None:
    """A rounded box with a bold title and monospace lines below it (top-left aligned)."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=colour, edgecolor="#333333", linewidth=1.1))
    ax.text(x + 0.15, y + h - 0.16, title, ha="left", va="top", weight="bold",
            size=title_size)
    for i, line in enumerate(lines):
        ax.text(x + 0.18, y + h - 0.55 - 0.27 * i, line, ha="left", va="top", **MONO)


def arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str,
          both: bool = True, offset: float = 0.13) -> None:
    """A straight arrow (double-headed when data goes both ways) with a label above it."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>" if both else "-|>",
                                 mutation_scale=11, linewidth=1.2, color="#444444"))
    ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + offset, label, ha="center",
            va="bottom", size=7.8, style="italic", color="#222222")


def draw(out: Path) -> None:
    """Draw the diagram and save it as a PNG at ``out``."""
    fig, ax = plt.subplots(figsize=(13.5, 7.4))
    ax.set_xlim(0, 13.5)
    ax.set_ylim(0, 7.4)
    ax.axis("off")

    # middle: the three shared pieces
    box(ax, 4.75, 5.05, 4.0, 1.95, SHARED, "Runs: MLflow tracking server", [
        "mlflow server --serve-artifacts",
        "  backend store: PostgreSQL",
        "  artifacts: served over HTTP",
        "params, per-epoch curves,",
        "metrics, plots, net.pt per run"])
    box(ax, 4.75, 2.65, 4.0, 1.95, SHARED, "Artifacts: DVC remote (SSH or S3)", [
        "content-addressed cache:",
        "  data/features (30 min of trunk",
        "  time on 2 CPU cores), ingested,",
        "  augmented, split, models/net.pt",
        "+ queued experiments' outputs"])
    box(ax, 4.75, 0.35, 4.0, 1.85, SHARED, "Code: git remote (origin)", [
        "code, params.yaml, dvc.yaml,",
        "dvc.lock (which bytes each",
        "  output holds), .dvc/config",
        "experiments: refs/exps/*"])

    # left: a team member's machine
    box(ax, 0.25, 0.35, 3.7, 6.65, CLONE, "A team member's machine", [
        "git clone <origin> && cd fashiondvc",
        "pip install -e '.[dev]'",
        "dvc remote modify --local \\",
        "    shared keyfile ~/.ssh/id_ed25519",
        "export MLFLOW_TRACKING_URI=\\",
        "    http://tracking:5000",
        "dvc pull          # features etc.",
        "dvc exp run -S k=5",
        "  -> train, evaluate, index only",
        "dvc exp run --queue -S k=4 ...",
        "dvc queue start -j 2",
        "dvc exp push origin <exp>",
        "",
        "after a new baseline:",
        "dvc repro && dvc push",
        "git commit dvc.lock ... && git push",
        "",
        "a teammate's experiment:",
        "dvc exp pull origin <exp>",
        "dvc exp apply <exp>",
    ], title_size=11)

    # right: compute
    box(ax, 9.55, 0.35, 3.7, 6.65, COMPUTE, "Compute: a GPU machine", [
        "a clone set up as on the left;",
        "dvc pull, then:",
        "dvc exp run -S train.devices=4",
        "",
        "train.devices > 1 runs the train",
        "stage under torchrun:",
    ], title_size=11)
    for i in range(4):
        x = 9.8 + (i % 2) * 1.65
        y = 3.45 - (i // 2) * 0.95
        ax.add_patch(FancyBboxPatch((x, y), 1.5, 0.75,
                                    boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=RANK, edgecolor="#666666", linewidth=0.9))
        ax.text(x + 0.75, y + 0.5, f"rank {i} - GPU {i}", ha="center", va="center",
                size=8.2, weight="bold")
        ax.text(x + 0.75, y + 0.24, "1/4 of each batch", ha="center", va="center",
                size=7.0)
        if i == 0:
            ax.text(x + 0.75, y + 0.08, "writes net.pt, MLflow", ha="center", va="center",
                    size=7.0, style="italic")
    ax.text(11.4, 1.95, "DistributedDataParallel: nccl on CUDA,\ngloo on CPU; gradients "
            "averaged,\nsame updates as one process", ha="center", va="top", size=7.8)
    ax.text(11.4, 0.95, "several machines: torchrun with a\nrendezvous endpoint on each",
            ha="center", va="top", size=7.8, style="italic")

    # traffic between clones and the shared pieces
    arrow(ax, (3.95, 6.0), (4.75, 6.0), "runs", both=False)
    arrow(ax, (3.95, 3.6), (4.75, 3.6), "dvc push\n/ pull")
    arrow(ax, (3.95, 1.25), (4.75, 1.25), "git push\n/ pull")
    arrow(ax, (9.55, 6.0), (8.75, 6.0), "runs", both=False)
    arrow(ax, (9.55, 3.6), (8.75, 3.6), "dvc pull\n/ push")
    arrow(ax, (9.55, 1.25), (8.75, 1.25), "git, exp\nrefs")

    fig.savefig(out, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("scaling.png"))
    args = parser.parse_args()
    draw(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
