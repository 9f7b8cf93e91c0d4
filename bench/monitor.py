"""Wall time and peak memory of commands and of the DVC stages they run, by polling /proc.

A stage is a process whose command line holds ``stages.<name>`` or ``stages/<name>.py`` (workers and
process-pool children are forks with the same command line: they are counted in their stage's
tree, not as stages of their own). Per stage we keep the peak resident set of the stage process
(``VmHWM``, exact) and the peak proportional set size of its whole tree (PSS: shared pages of
forked workers counted once, so the sum is the memory the stage really holds).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STAGE_RE = re.compile(r"\bstages[./](\w+)")
GIB = 2**30


@dataclass
class StageStats:
    """What the monitor saw of one stage."""

    first_seen: float
    last_seen: float
    hwm_bytes: int = 0
    tree_pss_bytes: int = 0
    tree_rss_bytes: int = 0

    @property
    def seconds(self) -> float:
        return self.last_seen - self.first_seen


@dataclass
class RunStats:
    """A command's wall time, exit code, load averages and stages."""

    command: list[str]
    seconds: float = 0.0
    returncode: int | None = None
    stages: dict[str, StageStats] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-friendly summary (GiB, seconds, load average mean/max)."""
        return {
            "command": " ".join(self.command), "seconds": round(self.seconds, 1),
            "returncode": self.returncode,
            "load_mean": round(sum(self.load) / len(self.load), 2) if self.load else None,
            "load_max": max(self.load) if self.load else None,
            "stages": {name: {"seconds": round(s.seconds, 1),
                              "peak_rss_gib": round(s.hwm_bytes / GIB, 3),
                              "peak_tree_pss_gib": round(s.tree_pss_bytes / GIB, 3),
                              "peak_tree_rss_gib": round(s.tree_rss_bytes / GIB, 3)}
                       for name, s in self.stages.items()},
        }


def _stage_of(proc: psutil.Process) -> str | None:
    try:
        match = STAGE_RE.search(" ".join(proc.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return match.group(1) if match else None


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(PSS, RSS) summed over ``proc`` and its descendants."""
    pss = rss = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
            pss, rss = pss + info.pss, rss + info.rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pss, rss


def _poll(root: psutil.Process, stats: RunStats) -> None:
    """One look at the tree under ``root``: update every running stage's figures."""
    now = time.perf_counter()
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    stage_of = {p.pid: _stage_of(p) for p in procs}
    for proc in procs:
        name = stage_of[proc.pid]
        if name is None:
            continue
        try:
            if stage_of.get(proc.ppid()) == name:
                continue  # a forked worker: counted in its stage's tree
        except psutil.NoSuchProcess:
            continue
        stage = stats.stages.setdefault(name, StageStats(now, now))
        stage.last_seen = now
        stage.hwm_bytes = max(stage.hwm_bytes, _hwm(proc.pid))
        pss, rss = _tree_memory(proc)
        stage.tree_pss_bytes = max(stage.tree_pss_bytes, pss)
        stage.tree_rss_bytes = max(stage.tree_rss_bytes, rss)


def run(command: list[str], *, cwd: str | os.PathLike | None = None, log=None,
        env: dict | None = None, interval: float = 0.5) -> RunStats:
    """Run ``command``, streaming its output to stdout and ``log``; poll its process tree."""
    stats = RunStats(list(command))
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    root = psutil.Process(proc.pid)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            _poll(root, stats)
            stats.load.append(os.getloadavg()[0])
            done.wait(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for line in proc.stdout:
        sys.stdout.write(line)
        if log is not None:
            log.write(line)
            log.flush()
    stats.returncode = proc.wait()
    done.set()
    watcher.join()
    stats.seconds = time.perf_counter() - start
    return stats
