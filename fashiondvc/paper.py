"""The paper's experiment table (g1..g14): queue its rows as DVC experiments, report ours beside it.

The table ships as ``paper_table.csv`` in the package. Its "y dimension" 11 maps to the label set
``colors11`` and 20 to ``attrs20``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

from fashiondvc.errors import FashionError
from fashiondvc.io import atomic_path, write_csv

LABEL_SET_FOR_Y = {11: "colors11", 20: "attrs20"}
#: (paper column, our metrics.json key)
COMPARED = (
    ("f1_train_test", "f1_train_test"),
    ("train_loss", "train_loss"),
    ("test_loss", "test_loss"),
    ("test_accuracy", "accuracy_keras"),
)
#: Settings the paper's rows share, reported with the table so nobody mistakes what ran.
SETTINGS = ("model.weights", "model.frozen_convs", "train.epochs", "augment.copies",
            "augment.image_size", "split.group_by_source")
DUPLICATE_NOTE = ("g13 and g14 have identical settings (20 labels, k = 10, lr = 1e-7) but "
                  "different results in the paper (F1 0.44 vs 0.43, test loss 15.03 vs 33.65, "
                  "accuracy 0.34 vs 0.07): the paper's runs were not reproducible.")


def paper_table() -> pd.DataFrame:
    """The paper's 14 rows: row, y_dim, k, lr and its reported metrics."""
    with resources.files("fashiondvc").joinpath("paper_table.csv").open() as handle:
        table = pd.read_csv(handle)
    table["labels"] = table["y_dim"].map(LABEL_SET_FOR_Y)
    return table


#: The recipe chosen on validation photos (reports/recipes/README.md): each component won its
#: comparison on validation mAP, for both label sets: the multiscale head over gap and flatten,
#: the asymmetric loss and per-label frequency weights over plain weighted BCE (earlier sweep,
#: reports/real-weights/), the colour histograms as a third input over trunk + side alone, the
#: multiscale head over region pooling, flip test-time augmentation over none; and search
#: ranking by the predicted attributes over the hidden layer (validation P@10). Best epoch by
#: validation mAP, per-label thresholds tuned on validation. Queued by
#: ``fashiondvc paper queue --beyond`` as ``beyond-<labels>`` (``--seeds 3``: one per seed).
RECIPE = ("model.frozen_convs=13", "model.head=multiscale",
          "model.inputs=[trunk,side,colour]", "train.loss=asl", "train.gamma=4",
          "train.pos_weight=frequency", "k=1", "lr=0.001", "train.epochs=20",
          "split.val_size=0.15", "train.select=best", "evaluate.thresholds=tuned",
          "featurize.mirror=true", "evaluate.tta=flip", "search.embedding=attributes")
BEYOND: dict[str, tuple[str, ...]] = {"attrs20": RECIPE, "colors11": RECIPE}


def queue_commands(overrides: Sequence[str] = (), force: bool = False,
                   rows: Sequence[str] | None = None, suffix: str = "",
                   beyond: bool = False, seeds: int = 1,
                   label_sets: Sequence[str] | None = None) -> list[list[str]]:
    """``dvc exp run --queue`` commands, with extra ``-S key=value`` overrides for each.

    The paper's 14 rows (or only ``rows``), named ``<row><suffix>``; with ``beyond``, the
    `BEYOND` recipe for each label set instead, named ``beyond-<labels><suffix>``, or with
    ``seeds`` > 1 once per training seed (``train.seed`` 0..seeds-1, same split), named
    ``beyond-<labels>-seed<i><suffix>``; ``label_sets`` keeps only those of `BEYOND`. Each
    targets the ``evaluate`` stage: the table's metrics do not need the search index.
    """
    if seeds < 1:
        raise FashionError(f"--seeds: must be >= 1, got {seeds}")
    for override in overrides:
        if "=" not in override:
            raise FashionError(f"-S {override}: expected key=value")
        _check_key(override.split("=", 1)[0])
    table = paper_table()
    if rows:
        unknown = sorted(set(rows) - set(table["row"]))
        if unknown:
            raise FashionError(f"--rows: unknown row {unknown[0]!r} (g1..g14)")
        table = table[table["row"].isin(rows)]
    recipes = BEYOND
    if label_sets:
        unknown = sorted(set(label_sets) - set(BEYOND))
        if unknown:
            raise FashionError(f"--labels: no recipe for {unknown[0]!r} "
                               f"({', '.join(BEYOND)})")
        recipes = {labels: BEYOND[labels] for labels in label_sets}
    if beyond and seeds > 1:
        jobs = [(f"beyond-{labels}-seed{seed}", [f"labels={labels}", *preset,
                                                 f"train.seed={seed}"])
                for labels, preset in recipes.items() for seed in range(seeds)]
    elif beyond:
        jobs = [(f"beyond-{labels}", [f"labels={labels}", *preset])
                for labels, preset in recipes.items()]
    else:
        jobs = [(row.row, [f"labels={row.labels}", f"k={row.k:g}", f"lr={row.lr:g}"])
                for row in table.itertuples()]
    commands = []
    for name, settings in jobs:
        command = ["dvc", "exp", "run", "--queue", "-n", f"{name}{suffix}"]
        merged = {s.split("=", 1)[0]: s for s in settings}  # an override replaces a preset
        merged.update({s.split("=", 1)[0]: s for s in overrides})
        for setting in merged.values():
            command += ["-S", setting]
        if force:
            command.append("--force")
        commands.append([*command, "evaluate"])
    return commands


def _check_key(key: str) -> None:
    """Refuse an ``-S`` key that params.yaml does not have, with a did-you-mean hint, before
    DVC's own four-line "Key ... is not in struct" (or, for ``+key``, a queued experiment
    whose first stage fails)."""
    import difflib

    from fashiondvc.params import CONSTRAINTS

    name = key.lstrip("+~")
    if name not in CONSTRAINTS:
        close = difflib.get_close_matches(name, CONSTRAINTS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise FashionError(f"-S {key}: unknown parameter{hint}")


def queue(overrides: Sequence[str] = (), force: bool = False, cwd: str | os.PathLike = ".",
          rows: Sequence[str] | None = None, suffix: str = "", beyond: bool = False,
          seeds: int = 1, label_sets: Sequence[str] | None = None) -> None:
    """Queue the experiments of `queue_commands`; the user then runs ``dvc queue start``."""
    commands = queue_commands(overrides, force, rows, suffix, beyond, seeds, label_sets)
    for command in commands:
        print(" ".join(command), flush=True)
        done = subprocess.run(command, cwd=cwd)
        if done.returncode != 0:
            raise FashionError(f"queueing {command[5]} failed (exit {done.returncode})")
    print(f"queued {len(commands)} experiments: run `dvc queue start` (`-j 2` for two at a "
          "time), then `fashiondvc paper report`")


def finished_experiments(repo: str | os.PathLike = ".") -> pd.DataFrame:
    """Metrics and table knobs of every finished experiment, one row per experiment name.

    Experiments of every commit on the current branch count (the table may have been run
    before the latest commit); of two with the same name, the newest wins.
    """
    import dvc.api

    rows = [row for row in dvc.api.exp_show(repo=str(repo), num=-1)
            if row.get("Experiment") and row.get("typ") != "baseline"
            and row.get("State") in (None, "Success") and row.get("f1_micro") is not None]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["Experiment"])
    frame = frame.sort_values("Created", ascending=False, na_position="last", kind="stable")
    return frame.drop_duplicates("Experiment", keep="first").set_index("Experiment")


def compare(results: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows with our numbers beside them (NaN where a row has not run).

    Ours include test micro-F1 and mAP, and the label-frequency predictor's on the same split.
    """
    table = paper_table()
    out = table[["row", "y_dim", "k", "lr", "labels"]].copy()
    ran = table["row"].isin(results.index)
    out["status"] = ran.map({True: "done", False: "not run yet"})
    for paper_column, ours in COMPARED:
        out[f"paper_{paper_column}"] = table[paper_column]
        out[f"ours_{ours}"] = table["row"].map(_column(results, ours)).astype(float)
    for extra in EXTRA:
        out[f"ours_{extra}"] = table["row"].map(_column(results, extra)).astype(float)
    return out


#: Our further columns: test micro-F1, mAP, and the label-frequency predictor's.
EXTRA = ("f1_micro", "accuracy_labelwise", "map", "baseline_f1_micro", "baseline_map")
#: Settings that tell variants and recipes apart, shown beside them.
RECIPE_KEYS = ("labels", "k", "lr", "model.backbone", "model.frozen_convs",
               "split.group_by_source", "split.val_size", "model.head", "model.inputs",
               "train.loss", "train.pos_weight", "train.label_pca", "train.select",
               "train.epochs", "train.seed", "evaluate.thresholds", "evaluate.tta",
               "search.embedding")
#: Test metrics of the variants table and the seeds summary, with the baseline's.
VARIANT_METRICS = ("val_map", "val_f1_micro", "f1_micro", "f1_micro_fixed", "map",
                   "f1_train_test", "accuracy_mean", "balanced_accuracy", "baseline_f1_micro",
                   "baseline_map", "baseline_accuracy_mean", "retrieval_p10",
                   "retrieval_p10_chance")


def _column(results: pd.DataFrame, name: str) -> pd.Series:
    return results[name] if name in results.columns else pd.Series(dtype=float)


def others(results: pd.DataFrame) -> pd.DataFrame:
    """Experiments that are not one of g1..g14: variants (``g8-leak``) and recipes (``beyond-*``).

    One row each: name, the paper row it varies (if any), `RECIPE_KEYS`, and test
    ``f1_micro``, ``f1_micro_fixed``, ``map``, ``f1_train_test`` and the baseline's.
    """
    rows = set(paper_table()["row"])
    names = [n for n in results.index if n not in rows]
    columns = list(VARIANT_METRICS)
    out = pd.DataFrame({"experiment": names,
                        "varies": [n.split("-")[0] if n.split("-")[0] in rows else ""
                                   for n in names]})
    for key in (*RECIPE_KEYS, *columns):
        out[key] = [results.at[n, key] if key in results.columns else None for n in names]
    if out.empty:
        return out
    return out.sort_values("experiment", key=lambda s: s.str.replace(r"\d+", lambda m:
                                                                     m.group().zfill(3),
                                                                     regex=True))


def seed_summary(variants: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd over the seeds of each ``<name>-seed<i>`` group of `others`' rows.

    One row per group: ``recipe``, ``seeds`` (count), and ``<metric>_mean`` and
    ``<metric>_sd`` for every `VARIANT_METRICS` column present.
    """
    if variants.empty:
        return pd.DataFrame()
    groups = variants["experiment"].str.extract(r"^(?P<recipe>.+)-seed\d+$")["recipe"]
    frame = variants.assign(recipe=groups).dropna(subset=["recipe"])
    rows = []
    for recipe, group in frame.groupby("recipe", sort=True):
        row = {"recipe": recipe, "seeds": len(group)}
        for metric in VARIANT_METRICS:
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            row[f"{metric}_mean"] = values.mean() if len(values) else float("nan")
            row[f"{metric}_sd"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_markdown(summary: pd.DataFrame) -> str:
    """`seed_summary` as a markdown table: mean ± sd of the headline test metrics."""
    shown = [("f1_micro", "test micro-F1"), ("map", "test mAP"),
             ("accuracy_mean", "mean attribute accuracy"),
             ("balanced_accuracy", "mean balanced accuracy"),
             ("retrieval_p10", "retrieval P@10"), ("val_map", "val mAP")]
    head = ["recipe", "seeds", *(title for _, title in shown),
            "label freq. F1 / mAP / accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.to_dict("records"):
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_sd']:.3f}" for m, _ in shown]
        baseline = " / ".join(f"{r[f'{m}_mean']:.3f}" for m in (
            "baseline_f1_micro", "baseline_map", "baseline_accuracy_mean"))
        lines.append("| " + " | ".join([r["recipe"], str(r["seeds"]), *cells, baseline]) + " |")
    return "\n".join(lines) + "\n"


def shared_settings(results: pd.DataFrame, rows: Sequence[str]) -> dict[str, str]:
    """The values of `SETTINGS` over the experiments named ``rows`` (comma-joined if several)."""
    done = results.loc[[r for r in rows if r in results.index]]
    def text(value: object) -> str:  # exp_show reports integers as floats
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return {key: ", ".join(sorted({text(v) for v in done[key].dropna()}))
            for key in SETTINGS if key in done.columns and len(done)}


def _same_number(a: object, b: object) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def to_markdown(comparison: pd.DataFrame, settings: dict[str, str] | None = None,
                variants: pd.DataFrame | None = None, preamble: str = "",
                defaults: dict | None = None) -> str:
    """The comparison as Markdown tables with the notes a reader needs.

    The variants table shows the `RECIPE_KEYS` that differ between variants or from
    ``defaults`` (flattened ``params.yaml``).
    """
    header = ("| row | y | k | lr | F1 (train+test) paper / ours | train loss paper / ours | "
              "test loss paper / ours | test acc. paper / ours (Keras-style) | "
              "test micro-F1 ours / label freq. | test mAP ours / label freq. |")
    lines = [header, "|" + "---|" * 10]

    def pair(paper: float, ours: float, digits: int = 2) -> str:
        ours_text = "not run yet" if pd.isna(ours) else f"{ours:.{digits}f}"
        return f"{paper:.{digits}f} / {ours_text}"

    def ours_only(value: float, baseline: float) -> str:
        return "" if pd.isna(value) else f"{value:.3f} / {baseline:.3f}"

    for r in comparison.itertuples():
        lines.append(
            f"| {r.row} | {r.y_dim} | {r.k:g} | {r.lr:g} | "
            f"{pair(r.paper_f1_train_test, r.ours_f1_train_test)} | "
            f"{pair(r.paper_train_loss, r.ours_train_loss)} | "
            f"{pair(r.paper_test_loss, r.ours_test_loss)} | "
            f"{pair(r.paper_test_accuracy, r.ours_accuracy_keras)} | "
            f"{ours_only(r.ours_f1_micro, r.ours_baseline_f1_micro)} | "
            f"{ours_only(r.ours_map, r.ours_baseline_map)} |")
    done = int((comparison["status"] == "done").sum())
    notes = [
        f"{done} of {len(comparison)} rows have finished experiments.",
        "F1 (train+test) is the micro F1 over train and test images together (the paper's "
        "column); losses are the weighted BCE summed over labels and averaged over images.",
        "Label freq.: a predictor that never looks at the image (each label scored by its "
        "training frequency; the labels that, always predicted, maximise training micro-F1 "
        "are predicted positive), on the same split.",
        "The paper's test accuracy is most likely Keras's `categorical_accuracy` (argmax of "
        "truth equals argmax of prediction); ours in that column is computed the same way.",
        DUPLICATE_NOTE,
    ]
    if settings:
        notes.insert(1, "Our rows ran with " + ", ".join(f"`{k}` = {v}"
                                                        for k, v in settings.items()) + ".")
    text = (preamble + "\n\n" if preamble else "") + "\n".join(lines) + "\n\n" + "\n".join(
        f"- {note}" for note in notes) + "\n"
    if variants is not None and len(variants):
        text += "\n## Variants and recipes\n\n" + _variants_markdown(variants, defaults)
        summary = seed_summary(variants)
        if not summary.empty:
            text += ("\n## Recipes over training seeds (same split): mean ± sd\n\n"
                     + seeds_markdown(summary))
    return text


def _variants_markdown(variants: pd.DataFrame, defaults: dict | None = None) -> str:
    defaults = defaults or {}

    def differs(key: str) -> bool:
        values = variants[key].dropna()
        return values.nunique() > 1 or (key in defaults and len(values) > 0 and any(
            str(v).lower() != str(defaults[key]).lower() and not _same_number(v, defaults[key])
            for v in values))

    keys = [k for k in RECIPE_KEYS if k == "labels" or differs(k)]
    head = ["experiment", *keys, "val mAP", "test micro-F1 (0.5)", "test micro-F1", "test mAP",
            "mean acc. / balanced acc.", "label freq. F1 / mAP / acc.",
            "retrieval P@10 / chance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(value: object) -> str:
        try:  # exp_show gives None, NaN or "None" for a metric a run does not have
            number = float(value)
        except (TypeError, ValueError):
            return ""
        return "" if pd.isna(number) else f"{number:.3f}"

    def text(value: object) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)

    for r in variants.to_dict("records"):
        lines.append("| " + " | ".join([
            r["experiment"], *(text(r[k]) for k in keys), num(r["val_map"]),
            num(r["f1_micro_fixed"]),
            num(r["f1_micro"]), num(r["map"]),
            f"{num(r.get('accuracy_mean'))} / {num(r.get('balanced_accuracy'))}",
            f"{num(r['baseline_f1_micro'])} / {num(r['baseline_map'])} / "
            f"{num(r.get('baseline_accuracy_mean'))}",
            f"{num(r['retrieval_p10'])} / {num(r['retrieval_p10_chance'])}"]) + " |")
    return "\n".join(lines) + "\n"


def plot(comparison: pd.DataFrame, path: str | os.PathLike) -> None:
    """Bar chart of F1 (train+test) and test accuracy, paper vs ours, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(comparison))
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, paper_column, ours, title in (
            (axes[0], "paper_f1_train_test", "ours_f1_train_test", "F1 (train+test)"),
            (axes[1], "paper_test_accuracy", "ours_accuracy_keras", "Test accuracy")):
        ax.bar(x - 0.2, comparison[paper_column], 0.4, label="paper")
        ax.bar(x + 0.2, comparison[ours].fillna(0), 0.4, label="ours")
        for i in np.flatnonzero(comparison[ours].isna()):
            ax.text(x[i] + 0.2, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
        ax.set(ylabel=title, ylim=(0, 1))
        ax.legend(loc="upper right")
    axes[1].set_xticks(x, comparison["row"])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _defaults(params_yaml: Path) -> dict:
    """``params.yaml`` flattened (YAML 1.2, not validated), or {} if unreadable."""
    from ruamel.yaml import YAML, YAMLError

    from fashiondvc.params import flatten

    try:
        return flatten(YAML(typ="safe", pure=True).load(params_yaml.read_text()) or {})
    except (OSError, YAMLError, AttributeError):
        return {}


def recipes_report(repo: str | os.PathLike = ".", out_dir: str | os.PathLike = "reports/recipes",
                   preamble: str = "") -> Path:
    """Write ``recipes.md``, ``recipes.csv`` and ``seeds.csv`` into ``out_dir``: every finished
    experiment that is not a paper row (the variants table of `report`), and the mean ± sd
    over the seeds of each ``<recipe>-seed<i>`` group, without the paper's table."""
    out_dir = Path(out_dir)
    variants = others(finished_experiments(repo))
    if variants.empty:
        raise FashionError("no finished experiment besides the paper's rows: run some first")
    summary = seed_summary(variants)
    write_csv(out_dir / "recipes.csv", variants)
    text = "# Recipes beyond the paper\n\n" + (preamble + "\n\n" if preamble else "")
    text += "## Every recipe tried\n\n" + _variants_markdown(
        variants, _defaults(Path(repo) / "params.yaml"))
    if not summary.empty:
        write_csv(out_dir / "seeds.csv", summary)
        text += ("\n## Over training seeds (same split): mean ± sd\n\n"
                 + seeds_markdown(summary))
    with atomic_path(out_dir / "recipes.md") as tmp:
        tmp.write_text(text)
    return out_dir / "recipes.md"


def report(repo: str | os.PathLike = ".", out_dir: str | os.PathLike = "reports/latest",
           preamble: str = "") -> Path:
    """Write ``paper_table.md``, ``.csv``, ``.png`` and ``variants.csv`` into ``out_dir``.

    The default folder is not the committed reference results (``reports/real-weights/``):
    a partial table never overwrites them unless asked to with ``out_dir``.
    """
    out_dir = Path(out_dir)
    results = finished_experiments(repo)
    comparison = compare(results)
    settings = shared_settings(results, comparison["row"])
    variants = others(results)
    defaults = _defaults(Path(repo) / "params.yaml")
    write_csv(out_dir / "paper_table.csv", comparison)
    write_csv(out_dir / "variants.csv", variants)
    summary = seed_summary(variants)
    if not summary.empty:
        write_csv(out_dir / "seeds.csv", summary)
    with atomic_path(out_dir / "paper_table.md") as tmp:
        tmp.write_text("# The paper's table, reproduced\n\n"
                       + to_markdown(comparison, settings, variants, preamble, defaults))
    plot(comparison, out_dir / "paper_table.png")
    return out_dir / "paper_table.md"
