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
