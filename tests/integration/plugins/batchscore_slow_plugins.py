"""Deliberately slow stages for fault tests: the run must still be going when the fault hits."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from batchscore_test_plugins import PLUGIN_FEATURES

from models.features import transform_table


def slow_features(batch: pa.Table) -> dict[str, np.ndarray]:
    time.sleep(0.25)
    return transform_table(batch, PLUGIN_FEATURES)


def failing_features(batch: pa.Table) -> dict[str, np.ndarray]:
    """Raises for every batch holding user 7's rows: those rows go to the dead-letter output."""
    if 7 in batch.column("user_id").to_pylist():
        raise ValueError("user 7 breaks my feature code")
    return transform_table(batch, PLUGIN_FEATURES)


def record_node_features(batch: pa.Table) -> dict[str, np.ndarray]:
    """Notes the Ray node and process that ran this preprocessing batch (for placement tests)."""
    import os
    import uuid

    import ray

    node = ray.get_runtime_context().get_node_id()
    with open(os.path.join(os.environ["BATCHSCORE_TEST_NODE_LOG"], uuid.uuid4().hex), "w") as f:
        f.write(f"{node} {os.getpid()}")
    return transform_table(batch, PLUGIN_FEATURES)


# the second test date's (tests/support.py DATES) row 1500: its batch never comes back
BLOCK_EVENT = "2026-10-02-1500"


def blocking_features(batch: pa.Table) -> dict[str, np.ndarray]:
    """Blocks forever on the one batch holding BLOCK_EVENT, like user code waiting on a peer that
    never answers; every other batch goes through."""
    import os
    import threading

    if BLOCK_EVENT in batch.column("event_id").to_pylist():
        marker = os.environ.get("BATCHSCORE_TEST_BLOCKED")
        if marker:  # when it blocked, for the test's clock
            with open(marker, "w") as f:
                f.write(str(time.time()))
        threading.Event().wait()
    return transform_table(batch, PLUGIN_FEATURES)


def paced_failing_features(batch: pa.Table) -> dict[str, np.ndarray]:
    """A steady pace (0.1 s a batch) for kills at a chosen share of a date, and a few dead letters:
    the batches holding event 1234 or 3210 of a date fail (tests/integration/test_resume.py)."""
    time.sleep(0.1)
    if any(e.rsplit("-", 1)[-1] in ("1234", "3210") for e in batch.column("event_id").to_pylist()):
        raise ValueError("events 1234 and 3210 break my feature code")
    return transform_table(batch, PLUGIN_FEATURES)
