"""first_batch_s and total_s count from one origin (the process start for `batchscore score`):
the report said `first_batch 2.89 s  total 2.62 s` when total counted from the run_score call."""

from __future__ import annotations

import time

from pipeline.run.clock import count_from_process_start, monotonic_start, seconds_to_first, take_origin


def test_total_and_first_batch_count_from_the_same_origin():
    count_from_process_start()
    origin = take_origin()  # the process start: imports and this test's collection are behind it
    t_start = monotonic_start(origin)
    first = seconds_to_first({"first_at": {"scored": time.time()}}, "scored", origin)
    total = time.perf_counter() - t_start
    assert first is not None and 0 < first <= total + 0.02  # /proc's start time: 10 ms ticks
    assert abs(total - (time.time() - origin)) < 0.05


def test_a_library_call_counts_from_the_call():
    origin = take_origin()
    assert abs(time.time() - origin) < 0.05
    assert time.perf_counter() - monotonic_start(origin) < 0.05
