"""The paper's table: queue commands, and the report's rows, variants and notes (no DVC run)."""

import re

import pandas as pd
import pytest

from fashiondvc.errors import FashionError
from fashiondvc.paper import BEYOND, compare, others, queue_commands, to_markdown


def test_queue_commands_pass_overrides_through():
    commands = queue_commands(["model.frozen_convs=13"])
    assert len(commands) == 14
    assert commands[6] == ["dvc", "exp", "run", "--queue", "-n", "g7", "-S", "labels=attrs20",
                           "-S", "k=2", "-S", "lr=1e-06", "-S", "model.frozen_convs=13",
                           "evaluate"]


def test_rows_and_suffix_name_the_variants():
    commands = queue_commands(["split.group_by_source=false"], rows=["g8", "g2"],
                              suffix="-leak")
    assert [c[5] for c in commands] == ["g2-leak", "g8-leak"]  # in table order
    assert "split.group_by_source=false" in commands[0]
    with pytest.raises(FashionError, match="--rows: unknown row 'g15'"):
        queue_commands(rows=["g15"])
    with pytest.raises(FashionError, match="expected key=value"):
        queue_commands(["k5"])


def test_beyond_queues_one_recipe_per_label_set():
    commands = queue_commands(["model.weights=w.pth"], beyond=True)
    assert [c[5] for c in commands] == [f"beyond-{labels}" for labels in BEYOND]
    for command, (labels, preset) in zip(commands, BEYOND.items(), strict=True):
        settings = command[7:-1:2]
        assert settings == [f"labels={labels}", *preset, "model.weights=w.pth"]


def test_report_says_which_rows_have_not_run():
    results = pd.DataFrame({"f1_train_test": [0.6], "train_loss": [5.0], "test_loss": [6.0],
                            "accuracy_keras": [0.5], "f1_micro": [0.55],
                            "accuracy_labelwise": [0.8], "map": [0.4],
                            "baseline_f1_micro": [0.52], "baseline_map": [0.16]},
                           index=["g8"])
    comparison = compare(results)
    text = to_markdown(comparison)
    assert "| g8 | 20 | 3 | 1e-07 | 0.52 / 0.60 |" in text
    assert "| 0.550 / 0.520 | 0.400 / 0.160 |" in text
    assert text.count("not run yet") == 13 * 4
    assert "g13 and g14 have identical settings" in text


def test_variants_are_listed_with_the_settings_that_differ():
    results = pd.DataFrame({
        "labels": ["attrs20", "attrs20", "colors11"], "k": [3, 3, 1],
        "split.group_by_source": [True, False, True], "model.head": ["flatten"] * 2 + ["gap"],
        "f1_micro": [0.5, 0.6, 0.7], "f1_micro_fixed": [0.5, 0.6, 0.65], "map": [0.3, 0.4, 0.5],
        "f1_train_test": [0.5, 0.6, 0.7], "baseline_f1_micro": [0.52, 0.52, 0.38],
        "baseline_map": [0.16, 0.16, 0.12], "retrieval_p10": [0.4, 0.4, 0.3],
        "retrieval_p10_chance": [0.2, 0.2, 0.1]}, index=["g8", "g8-leak", "beyond-colors11"])
    variants = others(results)
    assert variants["experiment"].tolist() == ["beyond-colors11", "g8-leak"]
    assert variants.set_index("experiment").loc["g8-leak", "varies"] == "g8"
    text = to_markdown(compare(results), variants=variants)
    assert "## Variants and recipes" in text
    assert "| g8-leak | attrs20 | 3 | False | flatten |  | 0.600 | 0.600 | 0.400 |" in text


def test_report_with_only_paper_rows_has_no_variants_section():
    results = pd.DataFrame({"f1_micro": [0.5], "map": [0.3]}, index=["g8"])
    variants = others(results)
    assert variants.empty
    assert "## Variants" not in to_markdown(compare(results), variants=variants)


def test_beyond_with_seeds_queues_each_seed_and_the_report_averages_them():
    from fashiondvc.paper import seed_summary, seeds_markdown

    commands = queue_commands(beyond=True, seeds=3)
    names = [c[5] for c in commands]
    assert names == [f"beyond-{labels}-seed{s}" for labels in BEYOND for s in range(3)]
    assert commands[2][-3:] == ["-S", "train.seed=2", "evaluate"]
    with pytest.raises(FashionError, match="--seeds: must be >= 1"):
        queue_commands(beyond=True, seeds=0)
    results = pd.DataFrame({"labels": ["attrs20"] * 3 + ["colors11"],
                            "f1_micro": [0.70, 0.72, 0.74, 0.5], "map": [0.5, 0.6, 0.7, 0.4],
                            "accuracy_mean": [0.9, 0.9, 0.9, 0.8]},
                           index=["beyond-attrs20-seed0", "beyond-attrs20-seed1",
                                  "beyond-attrs20-seed2", "beyond-colors11"])
    summary = seed_summary(others(results)).set_index("recipe")
    assert list(summary.index) == ["beyond-attrs20"] and summary.at["beyond-attrs20",
                                                                    "seeds"] == 3
    assert summary.at["beyond-attrs20", "f1_micro_mean"] == pytest.approx(0.72)
    assert summary.at["beyond-attrs20", "map_sd"] == pytest.approx(0.1)
    assert "| beyond-attrs20 | 3 | 0.720 ± 0.020 | 0.600 ± 0.100 | 0.900 ± 0.000 |" in \
        seeds_markdown(summary.reset_index())


def test_an_override_replaces_the_presets_value_instead_of_repeating_the_key():
    command = queue_commands(["train.epochs=3", "model.weights=w.pth"], beyond=True)[0]
    settings = command[7:-1:2]
    assert "train.epochs=3" in settings and "train.epochs=20" not in settings
    assert [s.split("=")[0] for s in settings].count("train.epochs") == 1


def test_beyond_can_queue_one_label_set():
    names = [c[5] for c in queue_commands(beyond=True, seeds=2, label_sets=["colors11"])]
    assert names == ["beyond-colors11-seed0", "beyond-colors11-seed1"]
    with pytest.raises(FashionError, match="--labels: no recipe for 'binary23'"):
        queue_commands(beyond=True, label_sets=["binary23"])


def test_recipes_report_lists_variants_and_seed_means(tmp_path, monkeypatch):
    from fashiondvc import paper

    results = pd.DataFrame({"labels": ["attrs20"] * 2, "f1_micro": [0.6, 0.7],
                            "map": [0.5, 0.6], "accuracy_mean": [0.9, 0.92],
                            "balanced_accuracy": [0.7, 0.72]},
                           index=["r-seed0", "r-seed1"])
    monkeypatch.setattr(paper, "finished_experiments", lambda repo: results)
    path = paper.recipes_report(tmp_path, tmp_path / "out")
    text = path.read_text()
    assert "| r-seed0 |" in text and "0.900 / 0.700" in text
    assert "| r | 2 | 0.650 ± 0.071 | 0.550 ± 0.071 |" in text
    assert (tmp_path / "out" / "seeds.csv").exists()
    monkeypatch.setattr(paper, "finished_experiments", lambda repo: results.iloc[:0])
    with pytest.raises(FashionError, match="no finished experiment"):
        paper.recipes_report(tmp_path, tmp_path / "out2")


@pytest.mark.parametrize("key", ["train.epoch", "+train.epoch"])
def test_queue_refuses_an_unknown_key_with_a_did_you_mean_before_dvc(key):
    """DVC's answer was four lines ("Key 'epoch' is not in struct"), or with ``+`` a queued
    experiment that fails in its first stage."""
    expected = f"-S {key}: unknown parameter (did you mean train.epochs?)"
    with pytest.raises(FashionError, match=re.escape(expected)):
        queue_commands([f"{key}=3"])
