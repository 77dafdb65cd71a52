"""Where a run's time to its first scored batch (`timings_s.first_batch_s`) is counted from.

A command whose run is the process's work (`batchscore score` and `backfill`, also as
`python -m jobs.score` or a Ray job's entrypoint) counts from the start of the process, so the
figure holds interpreter start, imports and Ray's start, as a user timing the command sees them.
A library call of `run_score` counts from the call (a notebook's idle minutes before it are not
the run's), and so do `batchscore demo` (which first generates data and trains) and any later run
of the same process (a backfill's second run). The run's `total_s` counts from the same origin,
so first_batch_s <= total_s."""

from __future__ import annotations

import os
import time

_process_origin: float | None = None


def process_started_at() -> float:
    """Wall-clock time the process started: from /proc (10 ms resolution) on Linux, else now."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        start_ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def count_from_process_start() -> None:
    """Called by entry points that own their process: the next run counts from its start."""
    global _process_origin
    _process_origin = process_started_at()


def take_origin() -> float:
    """The origin for a run starting now: the process start once after
    `count_from_process_start`, else now."""
    global _process_origin
    origin, _process_origin = _process_origin, None
    return origin if origin is not None else time.time()


def seconds_to_first(snapshot: dict, stage: str, origin: float) -> float | None:
    """Seconds from `origin` to the first batch a stage counted (progress counter snapshot;
    wall clocks of the worker and the driver), or None when it counted none."""
    at = (snapshot.get("first_at") or {}).get(stage)
    return round(at - origin, 3) if at is not None else None


def monotonic_start(origin: float) -> float:
    """`origin` (wall clock, from `take_origin`) on time.perf_counter's clock: the run's total
    then counts from where its first batch counts from, and is not thrown off by a wall-clock
    step during the run."""
    return time.perf_counter() - max(0.0, time.time() - origin)
