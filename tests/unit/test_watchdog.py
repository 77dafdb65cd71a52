"""The watchdog without Ray: durations and deadlines, the stalled stage from the counts, a
blocked worker that cannot hold the supervising thread, the deadline gauges in the textfile."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.config import RunConfig, parse_duration, resolve_deadline
from pipeline.errors import EXIT_DEADLINE, EXIT_STALLED, DeadlineError, StallError, exit_code_of
from pipeline.reporting.metrics import deadline_text, update_deadline_gauges
from pipeline.reporting.progress import InProcessCounter, ProgressView
from pipeline.run.watchdog import Hooks, Watchdog, stalled_stage, supervise


def test_durations_and_deadlines():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration("90") == parse_duration("90s") == 90
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration("soon")
    start = datetime(2026, 12, 4, 22, 0, tzinfo=timezone.utc)  # 23:00 in Berlin
    assert resolve_deadline("06:00 Europe/Berlin", start) == datetime(2026, 12, 5, 5, 0, tzinfo=timezone.utc)
    assert resolve_deadline("23:30 Europe/Berlin", start) == start + timedelta(minutes=30)
    assert resolve_deadline("2h", start) == start + timedelta(hours=2)
    assert RunConfig().stall_timeout_s == 1800
    assert RunConfig(stall_timeout=None).stall_timeout_s is None
    for bad in ("06:00", "06:00 Mars/Base", "0s"):
        with pytest.raises(ValueError):
            RunConfig(deadline=bad) if bad != "0s" else RunConfig(stall_timeout=bad)


def test_stalled_stage_from_the_counts():
    assert stalled_stage({"read": 300, "preprocessed": 200, "scored": 200}, 0, 1000).startswith("preprocess")
    counts = {"read": 300, "preprocessed": 300, "rejected": 10, "scored": 190}
    assert stalled_stage(counts, 0, 1000).startswith("predict (100")
    counts["scored"] = 290  # the rejected rows are not in the predict stage
    assert stalled_stage(counts, 0, 1000).startswith("read (700")
    assert stalled_stage({}, 0, 1000).startswith("read (no row read yet")
    done = {"read": 1000, "preprocessed": 1000, "scored": 1000}
    assert stalled_stage(done, 400, 1000).startswith("write (600")


def _view(counter: InProcessCounter, total: int = 1000) -> ProgressView:
    return ProgressView(counter, total, lambda: 0)


def test_a_blocked_worker_cannot_hold_the_run():
    """The work never returns; the supervising thread raises the StallError soon after the
    timeout, naming the stage and the work in flight, and marks the blocked thread abandoned."""
    counter = InProcessCounter()
    counter.add.remote("read", 100)
    hooks = Hooks(activity=[lambda: ["thread t0: scoring 100 rows of f.parquet for 2s"]])
    dog = Watchdog(_view(counter), 1000, stall_timeout_s=1.0, hooks=hooks).start()
    halted = threading.Event()
    hooks.halt.append(halted.set)
    t0 = time.monotonic()
    with pytest.raises(StallError) as info:
        supervise(lambda: threading.Event().wait(), dog, grace_s=0.2)
    dog.stop()
    assert time.monotonic() - t0 < 5
    assert halted.is_set() and info.value.abandoned
    assert exit_code_of(info.value) == EXIT_STALLED
    assert "stalled stage: preprocess" in str(info.value)
    assert "in flight: thread t0: scoring 100 rows of f.parquet" in str(info.value)


def test_moving_counts_are_not_a_stall_and_a_result_comes_back():
    counter = InProcessCounter()
    dog = Watchdog(_view(counter), 1000, stall_timeout_s=1.0).start()

    def work() -> str:
        for _ in range(12):  # 2.4 s in all, longer than the timeout, moving all along
            counter.add.remote("read", 10)
            time.sleep(0.2)
        return "done"

    assert supervise(work, dog) == "done"
    dog.stop()
    assert dog.error is None


def test_deadline_projected_miss_is_exported_while_running_and_fail_stops(tmp_path):
    textfile = tmp_path / "batchscore.prom"
    textfile.write_text('batchscore_last_run_success{job="j"} 1.0\n')
    counter = InProcessCounter()
    deadline = datetime.now(timezone.utc) + timedelta(seconds=3)
    # a 10 s stall timeout: checks every 0.5 s (its 20th), and the counts move anyway
    dog = Watchdog(_view(counter), 10_000, 10.0, deadline, "fail", str(textfile), "j").start()

    def work() -> None:
        while True:  # 50 rows/s: 10,000 rows would take minutes
            counter.add.remote("scored", 10)
            time.sleep(0.2)

    with pytest.raises(DeadlineError) as info:
        supervise(work, dog, grace_s=0.1)
    dog.stop()
    assert exit_code_of(info.value) == EXIT_DEADLINE
    text = textfile.read_text()
    assert 'batchscore_last_run_success{job="j"} 1.0' in text  # the last run's figures are kept
    assert 'batchscore_deadline_projected_miss{job="j"} 1.0' in text
    assert "batchscore_deadline_projected_finish_timestamp_seconds" in text
    summary = dog.summary()
    assert summary is not None and summary["projected_miss"] and summary["missed"]


def test_deadline_gauges_replace_each_other(tmp_path):
    path = tmp_path / "x.prom"
    update_deadline_gauges(str(path), deadline_text("j", 100.0, 50.0, False))
    update_deadline_gauges(str(path), deadline_text("j", 100.0, 150.0, True))
    text = path.read_text()
    assert text.count("batchscore_deadline_timestamp_seconds{") == 1
    assert 'batchscore_deadline_projected_finish_timestamp_seconds{job="j"} 150.0' in text
