"""The bench scripts run: gpu.py end to end on a CPU with a tiny archive, machine.py, epoch.py.

Scripts, not library code: run as subprocesses, the way a GPU machine or a person runs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fashiondvc.index import SearchIndex

BENCH = Path(__file__).resolve().parents[1] / "bench"
PHASES = {"machine", "archive", "ingest", "augment", "split", "featurize_fc12", "train_fc12",
          "featurize_fc8", "train_fc8", "index", "search", "total"}


def bench_script(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python <command>``; fail with its output when it exits non-zero."""
    result = subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def gpu_run(sample_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One CPU run of bench/gpu.py: 2 photos (22 images) at 64 px, 2 epochs, 2 queries."""
    work = tmp_path_factory.mktemp("gpu")
    result = bench_script([
        str(BENCH / "gpu.py"), "--archive", str(sample_zip), "--device", "cpu",
        "--photos", "2", "--epochs", "2", "--size", "64", "--weights", "random",
        "--workers", "0", "--queries", "2", "--gemm-n", "256", "--gemm-seconds", "0.1",
        "--work", str(work / "work"), "--out", str(work / "out.json")], cwd=work)
    data = json.loads(result.stdout)  # stdout is the one JSON, nothing else
    assert json.loads((work / "out.json").read_text()) == data
    assert "featurize_fc12:" in result.stderr  # progress went to stderr
    return data, work / "work"


def test_gpu_script_times_every_phase(gpu_run: tuple[dict, Path]) -> None:
    data, _ = gpu_run
    assert data["complete"] is True and data["device"] == "cpu"
    assert set(data["seconds"]) == PHASES
    assert all(s >= 0 for s in data["seconds"].values()) and data["seconds"]["total"] > 0
    assert data["data"] == {"archive": data["data"]["archive"], "photos": 2, "images": 22,
                            "copies": 10, "size": 64}
    assert data["roofline"]["device"] == "cpu" and data["roofline"]["n"] == 256
    assert data["roofline"]["fp32"] > 0
    assert data["machine"]["cores"] >= 1 and "gpu" not in data and data["weights"] == "random"


def test_gpu_script_featurizes_and_trains_both_cuts(gpu_run: tuple[dict, Path]) -> None:
    data, _ = gpu_run
    fc12 = data["featurize_fc12"]
    assert fc12["images"] == 2 * 11 and fc12["images_per_s"] > 0
    assert fc12["shape"] == [512, 4, 4] and fc12["bytes_per_image"] == 512 * 4 * 4 * 2
    train = data["train_fc12"]
    assert (train["row"], train["labels"], train["frozen_convs"]) == ("g8", "attrs20", 12)
    assert train["train_rows"] + train["test_rows"] == 22 and train["train_rows"] % 11 == 0
    assert len(train["seconds_per_epoch"]) == 2 and min(train["seconds_per_epoch"]) > 0
    fc8 = data["fc8"]
    assert fc8["shape"] == [512, 8, 8] and fc8["bytes_per_image"] == 512 * 8 * 8 * 2
    assert (fc8["photos"], fc8["images"]) == (2, 22)
    assert fc8["train_rows"] + fc8["test_rows"] == 22 and min(fc8["train_rows"],
                                                              fc8["test_rows"]) == 11
    assert fc8["epoch_s"] > 0 and fc8["epoch_s_all_images"] == fc8["epoch_s"]
    assert fc8["featurize_images_per_s"] > 0


def test_gpu_script_search_answers_with_indexed_photos(gpu_run: tuple[dict, Path]) -> None:
    data, work = gpu_run
    search = data["search"]
    assert search["index_photos"] == 2 and search["queries"] == 2
    assert search["one_off_ms_median"] > 0 and search["query_ms_median"] > 0
    assert search["one_off_ms_median"] >= search["query_ms_median"]
    data_dir = work / "pipeline" / "data"  # the in-process pipeline's folder, as the repo's
    index = SearchIndex.load(data_dir / "index")
    assert len(index) == 2 and index.root == data_dir / "ingested" / "images"
    # query k (1-based) is photo k % 2; it is left out of its own results
    assert search["top_results"] == [index.paths[0], index.paths[1]]
    assert all((index.root / path).is_file() for path in search["top_results"])


def test_gpu_script_rejects_bad_input(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--photos", "1",
                             "--work", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].endswith(
        "--photos: at least 2 (one train, one test photo)")


def test_machine_describe_roofline_fraction() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import machine
    finally:
        sys.path.remove(str(BENCH))
    described = machine.describe()
    assert {"cpu", "flags", "mhz", "cores", "torch", "torch_threads", "native_bf16", "cuda",
            "load"} <= set(described)
    roofline = machine.gemm_roofline(256, seconds=0.1)
    assert roofline["n"] == 256 and roofline["fp32"] > 0 and roofline["bf16"] > 0
    assert machine.fraction(50.0, {"fp32": 200.0, "bf16": 400.0}, "bf16") == 0.125
    assert machine.conv_gflop(13, 13) == pytest.approx(2 * 512 * 512 * 9 * 14 * 14 / 1e9)
    assert "GFLOP/s fp32" in machine.markdown(described, roofline)


def test_epoch_variants_runs(tmp_path: Path) -> None:
    """``epoch.py --variants`` on 8 rows, from a copy: it writes its JSON beside itself."""
    copy = tmp_path / "bench"
    copy.mkdir()
    for name in ("epoch.py", "machine.py"):
        shutil.copy(BENCH / name, copy / name)
    bench_script([str(copy / "epoch.py"), "--variants", "--rows", "8", "--gemm-n", "128"],
                 cwd=tmp_path)
    result = json.loads((copy / "epoch-variants-12.json").read_text())
    assert len(result["variants"]) == 4 and result["rows"] == 8
    assert all(row["train_img_s"] > 0 and row["eval_img_s"] > 0 for row in result["variants"])
    assert result["input_gradient_of_stored_features"] is False


@pytest.mark.slow
def test_run_py_measures_both_items_on_a_small_archive(sample_zip: Path, tmp_path: Path) -> None:
    """``run.py`` end to end on 4 photos (44 images): item 1 with roofline fractions, item 2."""
    out = tmp_path / "results.json"
    bench_script([str(BENCH / "run.py"), "--archive", str(sample_zip), "--work",
                  str(tmp_path / "work"), "--photos", "4", "--images", "16",
                  "--variant-images", "8", "--repeats", "1", "--batch", "8", "--workers", "0",
                  "--json", str(out), "--no-report"], cwd=tmp_path)
    results = json.loads(out.read_text())
    throughput = results["throughput"]
    assert throughput["images"] == 16 and throughput["ratio"] > 0
    assert throughput["ratio"] == max(throughput["featurize"]) / max(throughput["bare"])
    fractions = results["roofline_fractions"]
    assert {"bare loop", "featurize", "trunk fp32"} <= set(fractions)
    assert all(f["fraction"] > 0 for f in fractions.values())
    assert [r["frozen_convs"] for r in results["stored_vs_recompute"]] == [13, 12]
    assert all(r["images"] == 44 and r["train"] + r["test"] == 44
               for r in results["stored_vs_recompute"])
    assert not (BENCH / "results.md").stat().st_mtime > out.stat().st_mtime  # --no-report


@pytest.mark.slow
def test_experiment_cost_reuses_the_stored_features(sample_zip: Path, tmp_path: Path) -> None:
    """``experiment_cost.py`` on the 24-photo archive: the untargeted ``dvc exp run -S k=5``
    after a full run reruns train, evaluate and index from the stored features, never the
    trunk (featurize), and costs a fraction of the full run."""
    out = tmp_path / "cost.json"
    bench_script([str(BENCH / "experiment_cost.py"), "--archive", str(sample_zip),
                  "--weights", "random", "--epochs", "1", "--frozen-convs", "13",
                  "--dest", str(tmp_path / "clone"), "--out", str(out)], cwd=tmp_path)
    cost = json.loads(out.read_text())
    assert cost["full_run"]["returncode"] == 0 and cost["experiment"]["returncode"] == 0
    assert {"ingest", "augment", "featurize", "train", "evaluate", "index"} <= set(
        cost["full_run"]["stages"])
    assert {"train", "evaluate", "index"} <= set(cost["experiment_stages"])
    assert not {"ingest", "augment", "split", "featurize"} & set(cost["experiment_stages"])
    assert 0 < cost["fraction"] == round(cost["experiment"]["seconds"]
                                         / cost["full_run"]["seconds"], 4) < 1
