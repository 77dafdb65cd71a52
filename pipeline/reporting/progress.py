"""Progress of a run: rows read, scored and written, rows/s and ETA, one view on the driver.

Stages count their rows into a `ProgressCounter` actor (fire-and-forget calls, one per batch,
no CPU reserved); replicas register their device there. Rows written are counted from the
footers of the run's files that have appeared under the output table. A driver thread prints:

    progress  42% | read 3.4M/8.0M | scored 3.3M | written 2.5M | 131k rows/s | ETA 35s | 26s

On a terminal the line is redrawn in place every second; otherwise (a log file, a scheduler)
one plain line is printed every `report.progress_interval_s` seconds, with no control characters.

Why not a progress library: tqdm and rich redraw with carriage returns even when the stream is a
log file or `kubectl logs` (the plain-lines mode above is the point), and Ray Data's own progress
is per operator, which in fused mode is one operator from read to write, and it cannot see rows
that went to the dead letters. What is ours is the counting; the rendering is twenty lines."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO


class _Counter:
    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.replicas: dict[str, dict[str, Any]] = {}
        self.first_at: dict[str, float] = {}  # stage -> wall time of its first counted batch

    def add(self, stage: str, rows: int, at: float | None = None) -> None:
        self.rows[stage] = self.rows.get(stage, 0) + int(rows)
        if at is not None:  # the worker's time: calls made before this actor started arrive late
            self.first_at[stage] = min(self.first_at.get(stage, at), at)

    def replica(self, key: str, info: dict[str, Any]) -> None:
        self.replicas[key] = info

    def snapshot(self) -> dict[str, Any]:
        return {
            "rows": dict(self.rows),
            "replicas": list(self.replicas.values()),
            "first_at": dict(self.first_at),
        }


def start_counter():
    """A counter actor for one run (no CPU reserved, so it never competes with the stages)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(_Counter).remote()


def count(counter, stage: str, rows: int) -> None:
    """Add rows to a stage's count; never fails the stage (progress is informative only)."""
    if counter is not None and rows:
        with contextlib.suppress(Exception):
            counter.add.remote(stage, rows, time.time())


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _Call:
    """`.remote(...)` of an actor method, called in this process."""

    def __init__(self, fn: Callable[..., Any], lock: threading.Lock) -> None:
        self.fn, self.lock = fn, lock

    def remote(self, *args: Any) -> Any:
        with self.lock:
            return self.fn(*args)


class InProcessCounter:
    """The counter with the actor's API (`add.remote`, `replica.remote`, `snapshot.remote`) for the
    local runner's threads: the stages count the same way under either runner."""

    def __init__(self) -> None:
        counter, lock = _Counter(), threading.Lock()
        self.add, self.replica = _Call(counter.add, lock), _Call(counter.replica, lock)
        self.snapshot = _Call(counter.snapshot, lock)


class BufferedCounter:
    """The counter's API inside a scoring replica of the actors mode: the calls are kept and
    handed to the driver with the unit's next result (pipeline/run/pool.py), which replays them
    into its InProcessCounter. No counter actor, no call per batch to one: the pool already
    streams each unit's results to the driver. Every copy unpickled in a process is that
    process's one buffer (the model's stage and the preprocessing arrive in separate pickles)."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self.add, self.replica = self._recorder("add"), self._recorder("replica")

    def _recorder(self, name: str) -> _Call:
        def record(*args: Any) -> None:
            self._calls.append((name, args))

        return _Call(record, self._lock)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return process_buffer, ()

    def drain(self) -> list[tuple[str, tuple[Any, ...]]]:
        with self._lock:
            calls, self._calls = self._calls, []
        return calls


_PROCESS_BUFFER: list[BufferedCounter] = []


def process_buffer() -> BufferedCounter:
    """This process's BufferedCounter (what an unpickled one becomes)."""
    if not _PROCESS_BUFFER:
        _PROCESS_BUFFER.append(BufferedCounter())
    return _PROCESS_BUFFER[0]


def replay(counter: Any, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Apply a BufferedCounter's drained calls to `counter` (the driver's InProcessCounter)."""
    for name, args in calls:
        getattr(counter, name).remote(*args)


class ProgressView:
    """The driver thread that prints progress lines while the pipeline runs."""

    def __init__(
        self,
        counter,
        total_rows: int,
        written: Callable[[], int] | None,
        interval_s: float = 10.0,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.counter = counter
        self.total = total_rows
        self.written = written
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 1.0 if self.tty else interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._window: list[tuple[float, int]] = []
        self.last: dict[str, Any] = {"rows": {}, "replicas": []}
        self.lines = 0

    def start(self) -> ProgressView:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="batchscore-progress", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def poll(self, timeout: float = 5.0) -> dict[str, Any]:
        if isinstance(self.counter, InProcessCounter):
            self.last = self.counter.snapshot.remote()
            return self.last
        import ray

        if self.counter is not None:
            with contextlib.suppress(Exception):
                self.last = ray.get(self.counter.snapshot.remote(), timeout=timeout)
        return self.last

    def line(self, read: int, scored: int, written: int | None, now: float) -> str:
        elapsed = now - self._t0
        self._window.append((now, scored))
        self._window = [(t, n) for t, n in self._window if now - t <= 30.0] or [(now, scored)]
        t_old, n_old = self._window[0]
        rate = (
            (scored - n_old) / (now - t_old) if now - t_old >= 1.0 else (scored / elapsed if elapsed else 0)
        )
        pct = 100.0 * scored / self.total if self.total else 100.0
        eta = (self.total - scored) / rate if rate > 0 and scored < self.total else None
        parts = [
            f"progress {pct:3.0f}%",
            f"read {human(read)}/{human(self.total)}",
            f"scored {human(scored)}",
        ]
        if written is not None:
            parts.append(f"written {human(written)}")
        parts += [
            f"{human(rate)} rows/s",
            f"ETA {duration(eta) if eta is not None else '-'}",
            duration(elapsed),
        ]
        return " | ".join(parts)

    def emit(self, final: bool = False) -> str:
        # the last poll waits longer: on a busy node the counter actor may have started late
        snap = self.poll(timeout=30.0 if final else 5.0)
        rows = snap.get("rows", {})
        written = self.written() if self.written is not None else None
        text = self.line(rows.get("read", 0), rows.get("scored", 0), written, time.monotonic())
        if self.tty and not final:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()
        self.lines += 1
        return text

    def settle(self, timeout_s: float = 15.0) -> None:
        """Wait until every input row has been counted. Counts are fire-and-forget calls from
        the workers and may still be in flight when the pipeline ends (a worker's first calls wait
        until it has resolved the counter actor's address); calls from one worker arrive in order,
        so once the reads add up, its replica registration and earlier counts are in."""
        deadline = time.monotonic() + timeout_s
        while self.counter is not None and time.monotonic() < deadline:
            if self.poll().get("rows", {}).get("read", 0) >= self.total:
                time.sleep(0.2)  # the 'scored' call follows its slice's 'read' call
                return
            time.sleep(0.2)

    def stop(self, completed: bool = True) -> dict[str, Any]:
        """Stop the thread, print the final line, return the counter's last snapshot."""
        if self._stop.is_set():
            return self.last
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if completed:
            self.settle()
        self.emit(final=True)
        return self.last
