"""Training across processes: shares of each batch, 2 gloo ranks = 1 process, killed runs resume.

The multi-process tests run `distkit` (a toy `fit`) under torchrun, started as the train stage
starts it (`distributed.launch` re-executing the script), in a network namespace of its own:
torchrun's rendezvous store listens on every interface (c10d's TCPStore takes no bind
address), and no test may listen beyond loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import distkit
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from conftest import make_repo, run

from fashiondvc import distributed
from fashiondvc.errors import FashionError
from fashiondvc.net import AttributeNet, LabelPCA
from fashiondvc.rows import loader

DISTKIT = Path(__file__).parent / "distkit.py"


@pytest.fixture
def one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- in this process


def test_outside_torchrun_everything_is_one_process(one_process, monkeypatch, tmp_path):
    net = torch.nn.Linear(2, 2)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.wrap(net, torch.device("cpu")) is net
    assert distributed.average(1.25) == 1.25
    assert distributed.read_on_main(tmp_path / "missing.pt") is None
    (tmp_path / "train.pt").write_bytes(b"saved")
    assert distributed.read_on_main(tmp_path / "train.pt") == tmp_path / "train.pt"
    # nothing to launch: one device, or already a torchrun rank (this process would be gone)
    distributed.launch(SimpleNamespace(devices=1, device="cpu", batch_size=3))
    monkeypatch.setenv("LOCAL_RANK", "0")
    distributed.launch(SimpleNamespace(devices=2, device="cpu", batch_size=3))


def test_each_rank_takes_its_share_of_every_global_batch(one_process, monkeypatch):
    data = distkit.toy_sets()[0]
    whole = list(loader(data, 16, shuffle=True, seed=3, epoch=2).batch_sampler)
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(list(loader(data, 16, shuffle=True, seed=3, epoch=2).batch_sampler))
    assert len(whole) == len(shares[0]) == len(shares[1]) == distkit.N_TRAIN // 16
    for batch, first, second in zip(whole, *shares, strict=True):
        assert len(first) == len(second) == 8
        assert not set(first) & set(second)
        assert sorted(first + second) == sorted(batch)  # the one-process batch, split
    # another epoch, another order; unshuffled loaders (scoring) stay whole on every rank
    assert list(loader(data, 16, shuffle=True, seed=3, epoch=3).batch_sampler)[0] != shares[1][0]
    assert [len(b) for b in loader(data, 16, shuffle=False, seed=0).batch_sampler] == [16] * 4


def test_settings_a_run_cannot_use_are_refused(monkeypatch):
    cpu = torch.device("cpu")
    distributed.check(2, cpu, 64)
    with pytest.raises(FashionError, match="train.batch_size: 64 is not divisible by the 3"):
        distributed.check(3, cpu, 64)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FashionError, match="train.devices: 2 processes need as many CUDA"):
        distributed.check(2, torch.device("cuda"), 64)
    with pytest.raises(FashionError, match="train.batch_size"):
        distributed.launch(SimpleNamespace(devices=3, device="cpu", batch_size=64))


def test_dropout_streams_differ_by_rank_and_epoch(monkeypatch):
    seeds = set()
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        seeds |= {distributed.epoch_seed(0, epoch) for epoch in (1, 2)}
    assert len(seeds) == 4


def test_the_ddp_wrapper_reaches_the_nets_label_coding(tmp_path):
    """batch_loss reads ``net.label_pca``: through a plain DDP it would silently be None."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        pca = LabelPCA(torch.zeros(2, 3), torch.zeros(3))
        net = AttributeNet(torch.nn.Sequential(), {"trunk": (8, 2, 2)}, hidden=4, n_labels=3,
                           label_pca=pca)
        wrapped = distributed.DDP(net)
        assert wrapped.label_pca is pca
        assert wrapped.probabilities(torch.zeros(1, 2)).shape == (1, 3)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- under torchrun


def isolated(command: list[str]) -> list[str]:
    """``command`` in a network namespace of its own, holding only the loopback interface."""
    if not shutil.which("ip") or subprocess.run(["unshare", "-rn", "true"],
                                                capture_output=True).returncode:
        pytest.skip("needs unshare -rn (user and network namespaces) and ip")
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


def distkit_command(out: Path, devices: int, dropout: float, pause: float = 0.0) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return isolated([sys.executable, str(DISTKIT), str(out), str(devices), str(dropout),
                     str(pause)])


ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"}


def run_distkit(out: Path, devices: int, dropout: float) -> tuple[str, dict]:
    """Run `distkit` to the end; return its output and OUT/result.pt."""
    done = subprocess.run(distkit_command(out, devices, dropout), env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, torch.load(out / "result.pt", weights_only=False)


@pytest.mark.slow
def test_two_gloo_processes_give_the_losses_of_one(one_process, tmp_path):
    """Same seed, same global batch of 16 (8 per rank), dropout 0, SGD.

    The runs differ only in float32 summation order: each rank sums its 8 per-image losses,
    and gloo adds the two ranks' gradient means where one process takes the mean of 16.
    Measured on a 2-core CPU: relative differences of 1e-8 to 1e-7 in the losses over 4
    epochs (16 steps), 6e-8 in the weights. rtol 1e-5 leaves a hundredfold margin, and is far
    below what a wrong split shows: gradients summed instead of averaged double SGD's steps,
    a rank training on all rows doubles the steps per epoch (percent-level loss changes).
    Dropout is 0 because each rank draws its own masks (`distributed.epoch_seed`): with
    dropout the runs are equally good, not equal.
    """
    one_history, one_state = distkit.train(tmp_path / "one", dropout=0.0)
    out, two = run_distkit(tmp_path / "two", 2, 0.0)
    assert two["world_size"] == 2
    assert "training with 2 processes" in out
    assert [r["epoch"] for r in two["history"]] == [1, 2, 3, 4]
    for one_row, two_row in zip(one_history, two["history"], strict=True):
        for key in ("train_loss", "test_loss", "test_map"):
            assert two_row[key] == pytest.approx(one_row[key], rel=1e-5), (key, one_row)
    for key, value in one_state.items():
        torch.testing.assert_close(two["state"][key], value, rtol=1e-5, atol=1e-6)
    # only rank 0 calls on_epoch (the MLflow hook): once per epoch
    assert (tmp_path / "two" / "on_epoch.log").read_text().split("\n")[:-1] == [
        "0 1", "0 2", "0 3", "0 4"]


def processes_running(out: Path) -> list[int]:
    """Pids of live processes whose command line names ``out``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out) in (proc / "cmdline").read_text():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_as_if_never_killed(one_process, tmp_path):
    _, uninterrupted = run_distkit(tmp_path / "whole", 2, 0.5)  # dropout: ranks' streams too

    out = tmp_path / "killed"
    checkpoint = out / "train.pt"
    proc = subprocess.Popen(distkit_command(out, 2, 0.5, pause=3.0), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint before the run ended"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its group, as when DVC is killed
    proc.wait()
    deadline = time.monotonic() + 30
    while processes_running(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_running(out), "ranks outlived their torchrun"
    assert not (out / "result.pt").exists()
    done = len(json.loads(torch.load(checkpoint, weights_only=True)["history"]))
    assert 1 <= done < 4

    stdout, resumed = run_distkit(out, 2, 0.5)
    assert f"resuming from {checkpoint} after epoch {done}" in stdout
    assert resumed["history"] == uninterrupted["history"]  # exact floats
    for key, value in uninterrupted["state"].items():
        assert torch.equal(resumed["state"][key], value), key
    assert np.isfinite([row["train_loss"] for row in resumed["history"]]).all()


@pytest.mark.slow
def test_the_train_stage_trains_with_two_ranks_and_rank_0_writes(tmp_path, sample_zip):
    repo = make_repo(tmp_path / "repo", sample_zip, **{"train.devices": 2})
    done = run(isolated(["dvc", "repro", "train"]), repo, env={"GLOO_SOCKET_IFNAME": "lo"})
    assert "training with 2 processes" in done.stdout
    assert pd.read_csv(repo / "metrics" / "history.csv")["epoch"].tolist() == [1, 2]
    assert (repo / "models" / "net.pt").stat().st_size > 0
    assert not list((repo / ".checkpoints").iterdir())  # rank 0 removed it once done
