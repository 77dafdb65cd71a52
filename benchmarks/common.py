"""Shared by the benchmarks: the peak memory of a process tree, and the benchmark model.

Needs only the standard library (psutil optional), numpy, torch and the project, so the scripts
also run from the bundle on a lent GPU machine.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path


def _proc_children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/<pid>/stat (no psutil needed)."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def best_of(fn, repeat: int = 3) -> float:
    """Seconds, best of `repeat` (on a shared machine the minimum is the cost, the rest is noise)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def tree_pids(root: int | None = None) -> list[int]:
    """A process (default: this one) and all its descendants."""
    me = os.getpid() if root is None else root
    try:
        import psutil

        procs = psutil.Process(me).children(recursive=True)
        return [me, *(p.pid for p in procs)]
    except ImportError:
        pass
    except psutil.NoSuchProcess:  # the root exited between two samples
        return []
    kids = _proc_children()
    out, todo = [], [me]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return 0  # a worker that just exited


def pss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class PeakMemory:
    """Peak summed RSS (every 0.2 s) and PSS (every 1 s) of a process tree: this process and all
    its descendants, or those of `root` (a benchmarked child process: Ray's processes are its
    descendants), except the processes in `exclude` (e.g. a local S3 server standing in for
    remote storage)."""

    def __init__(self, exclude: set[int] | None = None, root: int | None = None) -> None:
        self.exclude = exclude or set()
        self.root = root
        self.peak_rss = 0
        self.peak_pss: int | None = None
        self._stop = threading.Event()

    def sample(self, with_pss: bool) -> tuple[int, int | None]:
        pids = [p for p in tree_pids(self.root) if p not in self.exclude]
        rss = sum(rss_bytes(p) for p in pids)
        pss = None
        if with_pss:
            vals = [pss_bytes(p) for p in pids]
            if any(v is not None for v in vals):
                pss = sum(v or 0 for v in vals)
        return rss, pss

    def _run(self) -> None:
        tick = 0
        while True:
            rss, pss = self.sample(with_pss=tick % 5 == 0)
            self.peak_rss = max(self.peak_rss, rss)
            if pss is not None:
                self.peak_pss = max(self.peak_pss or 0, pss)
            tick += 1
            if self._stop.wait(0.2):
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_model(root: Path, version: str = "bench"):
    """The built-in DLRM demo preset with random weights (seeded) and a feature spec fitted on a
    synthetic day, saved as a safetensors checkpoint in ROOT/model. Returns the feature spec."""
    import torch

    from jobs.synthetic import FEATURES, SyntheticSpec, generate_day
    from models.checkpoint import save_checkpoint
    from models.dlrm import build_dlrm
    from models.features import fit_dense_stats

    torch.manual_seed(0)
    spec = fit_dense_stats(generate_day("2026-09-30", SyntheticSpec(rows_per_day=50_000)), FEATURES)
    buckets = [f.buckets for f in spec.categorical]
    model = build_dlrm(buckets, len(spec.dense), preset="dlrm-demo").eval()
    arch = {
        "builtin": "dlrm",
        "preset": "dlrm-demo",
        "kwargs": {"buckets": buckets, "num_dense": len(spec.dense)},
    }
    out = root / "model"
    shutil.rmtree(out, ignore_errors=True)
    save_checkpoint(
        str(out), model, format="safetensors", version=version, feature_spec=spec, architecture=arch
    )
    return spec
