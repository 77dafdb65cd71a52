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
