"""Training across processes and GPUs: torchrun launch, process group, this rank's batches.

With ``train.devices`` > 1 the train stage re-executes itself under ``torchrun``
(`torch.distributed.run`) with that many processes on this machine; on several machines one
starts ``torchrun`` by hand with a rendezvous (README, "Training across processes and GPUs").
Every process runs the same `fashiondvc.train.fit`, joined by a process group (``nccl`` on
CUDA, one GPU per process; ``gloo`` on CPU) and wrapped in DistributedDataParallel, which
averages the gradients. Each global batch of ``train.batch_size`` rows is split across the
processes (`shard`: the union of the processes' i-th batches is the one-process run's i-th
batch), so the updates are those of one process up to float rounding. The loss is a mean
over images (`fashiondvc.losses`), hence averaging the per-rank gradients of equal-sized
shares equals the gradient of the whole batch.

Only rank 0 writes (checkpoint, ``net.pt``, history, MLflow); every rank reads rank 0's
checkpoint through the process group (`read_on_main`), so a resume works without a shared
disk. Dropout draws come from one stream per (seed, epoch, rank) (`epoch_seed`), so they
differ between ranks and a resumed run redraws them exactly. Outside torchrun (no
``WORLD_SIZE`` in the environment, or 1) every function here is the identity or a no-op.
"""

from __future__ import annotations

import atexit
import ctypes
import io
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from fashiondvc.errors import FashionError
from fashiondvc.runtime import resolve_device

__all__ = ["DDP", "average", "check", "epoch_seed", "is_main", "launch", "local_batch_size",
           "rank", "read_on_main", "setup", "shard", "world_size", "wrap"]


def world_size() -> int:
    """Number of processes in the run (torchrun's ``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine: the CUDA device index it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes outputs (rank 0)."""
    return rank() == 0


def check(processes: int, device: torch.device, batch_size: int, *,
          per_machine: int | None = None) -> None:
    """Refuse settings a run of ``processes`` cannot use, naming the parameter.

    Raises
    ------
    FashionError
        ``train.batch_size`` not divisible by ``processes`` (each takes an equal share of a
        global batch), or more processes per machine (``per_machine``, default
        ``processes``) than visible CUDA devices when ``device`` is CUDA.
    """
    if batch_size % processes:
        raise FashionError(f"train.batch_size: {batch_size} is not divisible by the "
                           f"{processes} training processes (train.devices)")
    per_machine = processes if per_machine is None else per_machine
    if device.type == "cuda" and per_machine > torch.cuda.device_count():
        raise FashionError(f"train.devices: {per_machine} processes need as many CUDA devices, "
                           f"{torch.cuda.device_count()} visible")


def launch(train) -> None:
    """Re-execute this script under torchrun with ``train.devices`` processes, when needed.

    ``train`` is the validated ``train`` block of params.yaml (`fashiondvc.params.TrainParams`).
    Returns (doing nothing) with ``devices`` <= 1 or when already under torchrun
    (``LOCAL_RANK`` set, e.g. a multi-machine run started by hand); otherwise this process
    becomes ``torchrun --standalone --nproc-per-node devices`` (`torchrun`) with
    the same stage module (``-m stages.train``, or script) and arguments (same process id: a
    signal to it reaches every rank), and each rank gets its share of the cores
    (``OMP_NUM_THREADS``, unless set).

    Raises
    ------
    FashionError
        From `check` or `fashiondvc.runtime.resolve_device`, before anything is started.
    """
    devices = train.devices
    if devices <= 1 or "LOCAL_RANK" in os.environ:
        return
    check(devices, resolve_device(train.device), train.batch_size)
    main = sys.modules["__main__"].__spec__  # `python -m stages.train`: keep the module form
    target = ["-m", main.name] if main is not None else [sys.argv[0]]
    command = [sys.executable, "-m", "fashiondvc.distributed", "--standalone",
               f"--nproc-per-node={devices}", *target, *sys.argv[1:]]
    print(f"training with {devices} processes: {' '.join(command[1:])}", flush=True)
    sys.stderr.flush()
    os.environ[LAUNCHER] = str(os.getpid())  # the pid torchrun will have
    # torchrun gives each rank 1 thread unless told; share the cores instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    os.execv(sys.executable, command)


LAUNCHER = "FASHIONDVC_TORCHRUN_PID"
"""Environment variable holding the pid of the torchrun that `launch` started."""


def _die_with_launcher() -> None:
    """Have the kernel SIGKILL this rank when its torchrun dies (Linux; no-op elsewhere).

    torchrun starts each rank in a session of its own, so a SIGKILL to the stage's process
    group (a killed ``dvc repro``) ends torchrun but not the ranks, which would train on and
    write outputs behind the next run's back. ``prctl(PR_SET_PDEATHSIG)`` ties them to it.
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.environ.get(LAUNCHER, str(os.getppid())) != str(os.getppid()):
        os._exit(1)  # torchrun died before prctl took effect


def setup(device: torch.device, batch_size: int) -> torch.device:
    """Join the process group (once per process) and return the device this rank trains on.

    ``nccl`` for CUDA, where rank ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK`` whatever index
    ``device`` names; ``gloo`` otherwise. Returns ``device`` unchanged outside torchrun.

    Raises
    ------
    FashionError
        From `check` (batch size not divisible by the world size, too few GPUs).
    """
    if world_size() == 1:
        return device
    check(world_size(), device, batch_size,
          per_machine=int(os.environ.get("LOCAL_WORLD_SIZE", world_size())))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _die_with_launcher()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(_teardown)
    return device


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class DDP(DistributedDataParallel):
    """DistributedDataParallel that passes unknown attributes (``label_pca``, ...) to the net."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` in `DDP` under torchrun (rank 0's weights copied to all), else ``net`` itself.

    Train through the wrapper; score and save the unwrapped ``net`` (same parameters).
    """
    if world_size() == 1:
        return net
    return DDP(net, device_ids=[device.index] if device.type == "cuda" else None)


def local_batch_size(batch_size: int) -> int:
    """This rank's share of a global batch of ``batch_size`` rows."""
    return batch_size // world_size()


def shard(dataset: Dataset, seed: int) -> DistributedSampler:
    """This rank's rows of the permutation ``torch.randperm(n)`` drawn with ``seed``.

    The permutation is `torch.utils.data.RandomSampler`'s with a generator seeded ``seed``,
    and rank r takes positions r, r + W, r + 2W, ... (W = world size), so cutting each rank's
    rows into batches of ``batch_size / W`` splits the one-process batches across ranks. When
    ``len(dataset)`` is not a multiple of W, the first rows are repeated to fill the last
    batch (DistributedSampler's padding).
    """
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                              seed=seed)


def average(value: float) -> float:
    """The mean of ``value`` over all ranks (``value`` itself outside torchrun)."""
    if world_size() == 1:
        return value
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of this rank's random stream (dropout) in ``epoch``: distinct per rank."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank()


def read_on_main(path: str | os.PathLike) -> str | os.PathLike | io.BytesIO | None:
    """Rank 0's file at ``path``, for every rank: the path (one process), its bytes, or None.

    Rank 0 reads the file and broadcasts its bytes, so the other ranks (other machines
    included) resume from the checkpoint that rank 0 wrote, whether or not they see its disk.
    """
    if world_size() == 1:
        return path if Path(path).exists() else None
    box = [Path(path).read_bytes() if is_main() and Path(path).exists() else None]
    dist.broadcast_object_list(box, src=0)
    return None if box[0] is None else io.BytesIO(box[0])


def torchrun(argv: list[str] | None = None) -> None:
    """``torchrun ARGS`` (``torch.distributed.run``) that ends in one line, not a traceback.

    Only rank 0 prints its ``error:`` line (`fashiondvc.errors.run_main`), so a failure common
    to all ranks is said once; every failed rank also leaves its line in a temporary folder.
    torchrun's own report (an error log line and a ``ChildFailedError`` traceback) is
    replaced by the first failed rank's line when rank 0 said nothing. Exits 1 when a rank
    failed.
    """
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from fashiondvc.errors import RANK_ERRORS

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="fashiondvc-ranks-") as folder:
        os.environ[RANK_ERRORS] = folder
        try:
            run(get_args_parser().parse_args(argv))
        except ChildFailedError as exc:
            said = {int(p.stem.split("-")[1]): p.read_text().strip()
                    for p in Path(folder).glob("rank-*.txt")}
            if 0 not in said:
                rank, failure = exc.get_first_failure()
                rank = rank if rank in said else min(said, default=rank)
                print(f"{said[rank]} (rank {rank})" if rank in said else
                      f"error: torchrun: rank {rank} failed (exit code {failure.exitcode})",
                      file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    torchrun()
