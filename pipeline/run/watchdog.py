"""The run's watchdog: a stall (no row read, scored or written for `run.stall_timeout`) and the
deadline (`run.deadline`: the ETA from measured throughput held against it while the run goes).

Why the pipeline runs on a thread of its own (`supervise`): a worker blocked forever in user code
(a preprocessing function waiting on a socket, a Ray task that never returns) leaves whatever
waits for it blocked too: Ray Data's `iter_batches`, a write's `ray.get`, the local runner's
joins. Interrupting that wait from outside (a signal to the main thread) works only when the run
is on the main thread, and only where the blocking call gives the interpreter a chance to run a
handler. So the thread that called `run_score` only ever waits in short timed joins on the
pipeline's thread, and stops waiting when the watchdog trips: it writes the report, discards the
run's uncommitted files and raises. A pipeline thread that does not stop (the blocked worker) is
left behind as a daemon; the error says so (`abandoned`), and the CLI then ends the process
(which ends a local Ray, and a cluster's Ray ends the job's workers with their driver)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from pipeline.errors import DeadlineError, RunStopped, StallError
from pipeline.reporting.progress import duration, human

log = logging.getLogger("batchscore")
T = TypeVar("T")


@dataclass
class Hooks:
    """What a runner offers the watchdog: how to ask its workers to stop, and what each one is
    doing now (lines for the report). Filled by the runner once it has started its workers."""

    halt: list[Callable[[], None]] = field(default_factory=list)
    activity: list[Callable[[], list[str]]] = field(default_factory=list)

    def stop(self) -> None:
        for h in self.halt:
            try:
                h()
            except Exception as e:  # stopping is best effort: the run is failing anyway
                log.debug("could not stop a runner: %s", e)

    def doing(self) -> list[str]:
        lines: list[str] = []
        for a in self.activity:
            try:
                lines += a()
            except Exception as e:  # informative only
                log.debug("no activity from a runner: %s", e)
        return lines


def stalled_stage(rows: dict[str, int], written: int | None, total: int) -> str:
    """The stage holding the run, from the counts (pipeline/reporting/progress.py): rows that
    entered preprocessing and never left it, rows preprocessed and never scored, input not read,
    scored rows not written."""
    read, pre = rows.get("read", 0), rows.get("preprocessed", 0)
    scored, rejected = rows.get("scored", 0), rows.get("rejected", 0)
    if read > pre:
        return f"preprocess ({human(read - pre)} rows went in and did not come out)"
    if pre - rejected > scored:
        return f"predict ({human(pre - rejected - scored)} preprocessed rows not scored)"
    if read == 0:
        return "read (no row read yet: the replicas or read tasks have not started, or wait for resources)"
    if read < total:
        return f"read ({human(total - read)} of {human(total)} input rows not read)"
    if written is not None and written < scored:
        return f"write ({human(scored - written)} scored rows not written)"
    return "write (every row is scored; the run's last files or its end are awaited)"


class Watchdog:
    """A thread that samples the run's progress every `tick_s` seconds. `tripped` is set when the
    run must stop; `error` says why. The deadline check only logs and exports unless
    `on_deadline` is 'fail'."""

    def __init__(
        self,
        progress: Any,  # a ProgressView: poll() -> counter snapshot, written() -> rows written
        total_rows: int,
        stall_timeout_s: float | None,
        deadline: datetime | None = None,
        on_deadline: str = "warn",
        textfile: str | None = None,
        job: str = "",
        hooks: Hooks | None = None,
    ) -> None:
        self.progress, self.total = progress, total_rows
        self.stall_timeout_s, self.deadline, self.on_deadline = stall_timeout_s, deadline, on_deadline
        self.textfile, self.job = textfile, job
        self.hooks = hooks or Hooks()
        limit = stall_timeout_s or 60.0
        self.tick_s = min(10.0, max(0.5, limit / 20))
        self.tripped = threading.Event()
        self.error: RunStopped | None = None
        self.projected_finish: datetime | None = None
        self.projected_miss = self.missed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple | None = None
        self._moved_at = time.monotonic()
        self._rate: list[tuple[float, int]] = []  # (monotonic, rows scored) over the last minutes

    def start(self) -> Watchdog:
        self._moved_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="batchscore-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.check(time.monotonic())
            except Exception as e:  # the watchdog must never end the run by its own failure
                log.debug("watchdog check failed: %s", e)
            if self.tripped.is_set():
                return

    def check(self, now: float) -> None:
        snap = self.progress.poll()
        rows = dict(snap.get("rows", {}))
        written = self.progress.written() if self.progress.written is not None else None
        # a replica that has loaded its model has moved too (a big model loads for minutes)
        state = (tuple(sorted(rows.items())), written, len(snap.get("replicas", [])))
        if state != self._last:
            self._last, self._moved_at = state, now
        if self.deadline is not None:
            self._check_deadline(now, rows.get("scored", 0))
        if self.stall_timeout_s is not None and now - self._moved_at >= self.stall_timeout_s:
            self._trip(StallError(self._stall_message(rows, written, now)))

    def _trip(self, error: RunStopped) -> None:
        if self.error is None:
            self.error = error
            # the whole message comes with the error; this marks the moment in the log
            log.error("watchdog: stopping the run: %s", str(error).splitlines()[0])
            self.tripped.set()

    def _stall_message(self, rows: dict[str, int], written: int | None, now: float) -> str:
        stage = stalled_stage(rows, written, self.total)
        doing = self.hooks.doing()
        order = ["read", "preprocessed", "rejected", "scored"]  # the pipeline's order, then the rest
        names = [k for k in order if k in rows] + sorted(k for k in rows if k not in order)
        last = ", ".join(f"{k} {human(rows[k])}" for k in names) or "nothing counted"
        if written is not None:
            last += f", written {human(written)}"
        lines = [
            f"run stalled: no row read, scored or written for {duration(now - self._moved_at)} "
            f"(run.stall_timeout {duration(self.stall_timeout_s or 0)}); stalled stage: {stage}",
            f"  last progress: {last} of {human(self.total)} input rows",
            *(f"  in flight: {line}" for line in doing),
        ]
        return "\n".join(lines)

    def _check_deadline(self, now: float, scored: int) -> None:
        wall = datetime.now(timezone.utc)
        assert self.deadline is not None
        self._rate = [(t, n) for t, n in self._rate if now - t <= 120.0] + [(now, scored)]
        t_old, n_old = self._rate[0]
        rate = (scored - n_old) / (now - t_old) if now - t_old >= 1.0 else 0.0
        if rate > 0 and scored < self.total:
            left = (self.total - scored) / rate
            self.projected_finish = datetime.fromtimestamp(wall.timestamp() + left, timezone.utc)
            miss = self.projected_finish > self.deadline
            if miss and not self.projected_miss:
                log.warning(
                    "deadline: projected to finish at %s, past the deadline %s (%s rows/s, %s rows left)",
                    _iso(self.projected_finish),
                    _iso(self.deadline),
                    human(rate),
                    human(self.total - scored),
                )
            self.projected_miss = self.projected_miss or miss
            self._export(miss)
        if wall >= self.deadline and not self.missed:
            self.missed = True
            self._export(True)
            what = (
                f"still scoring at the deadline {_iso(self.deadline)} "
                f"({human(scored)} of {human(self.total)} rows scored)"
            )
            if self.on_deadline == "fail":
                self._trip(DeadlineError(f"run stopped: {what}; run.on_deadline is 'fail'"))
            else:
                log.warning("deadline passed: %s; going on (run.on_deadline: warn)", what)

    def _export(self, miss: bool) -> None:
        if not self.textfile or self.deadline is None:
            return
        from pipeline.reporting.metrics import deadline_text, update_deadline_gauges

        finish = self.projected_finish.timestamp() if self.projected_finish else None
        try:
            text = deadline_text(self.job, self.deadline.timestamp(), finish, miss)
            update_deadline_gauges(self.textfile, text)
        except OSError as e:  # the log line says it too
            log.warning("could not write the deadline gauges to %s: %s", self.textfile, e)

    def summary(self) -> dict[str, Any] | None:
        """The report's `deadline` block (None without a deadline)."""
        if self.deadline is None:
            return None
        return {
            "at": _iso(self.deadline),
            "on_deadline": self.on_deadline,
            "projected_finish": _iso(self.projected_finish) if self.projected_finish else None,
            "projected_miss": self.projected_miss,
            "missed": self.missed or datetime.now(timezone.utc) >= self.deadline,
        }


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")


def supervise(work: Callable[[], T], dog: Watchdog, grace_s: float = 10.0) -> T:
    """`work()` on a daemon thread; this thread waits in timed joins, so it can stop waiting when
    `dog` trips (or on Ctrl-C) even if a worker never returns. Then the runner is asked to stop
    and given `grace_s` to do so; the watchdog's error is raised, `abandoned` if it did not."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as e:  # raised again in the supervising thread
            result["error"] = e

    thread = threading.Thread(target=target, name="batchscore-pipeline", daemon=True)
    thread.start()
    try:
        while thread.is_alive() and not dog.tripped.is_set():
            thread.join(0.2)
    except BaseException:  # Ctrl-C: the workers stop after their current piece of work
        dog.hooks.stop()
        thread.join(grace_s if dog.hooks.halt else 0)
        raise
    if thread.is_alive():  # tripped: whatever the stopped runner returns is partial
        dog.hooks.stop()
        thread.join(grace_s if dog.hooks.halt else 0)  # a runner with no stop cannot be waited out
        assert dog.error is not None
        dog.error.abandoned = thread.is_alive()
        raise dog.error
    if "error" in result:
        raise result["error"]
    return result["value"]
