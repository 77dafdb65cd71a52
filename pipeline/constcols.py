"""Columns that hold one value in every row (a block's date, `model_version`, `run_id`), as
slices of one array per value, built once per process.

Why not `pa.repeat` per batch: it allocates and fills a fresh buffer each time (the value's
bytes and an offset per row), and the pool hands freed buffers of that size back to the OS, so
every batch faults the pages in again and the kernel zeroes each one. In `perf record` of the
Ray path's replicas (benchmarks/RESULTS.md, issue 20) that page clearing under `pa.repeat` was
the largest single cost after the Parquet read. A slice of an array already built is free and
is the same string column to every reader of it."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

KEEP = 16  # values kept (the dates of a backfill's units, a run's version and id): the newest
_built: dict[str, pa.Array] = {}
_lock = threading.Lock()


def constant_strings(value: str, rows: int) -> pa.Array:
    """`rows` rows of `value` as a string array (a slice of the one kept for `value`)."""
    have = _built.get(value)
    if have is None or len(have) < rows:
        size = max(rows, 2 * len(have)) if have is not None else rows
        have = _repeated(value, size)
        with _lock:
            _built.pop(value, None)
            _built[value] = have
            while len(_built) > KEEP:
                del _built[next(iter(_built))]
    return have.slice(0, rows)


def _repeated(value: str, rows: int) -> pa.Array:
    """`value` in `rows` rows, built from its buffers. Why not `pa.repeat(pa.scalar(value))`:
    pyarrow's scalar from a Python object imports pandas first (to check for pandas types), 0.3 s
    in a fresh replica process, before its first block (measured: 0.32 s of a first read of
    0.84 s). Past 2 GiB of string data (int32 offsets), `pa.repeat` as before."""
    data = value.encode()
    if not data or rows * len(data) >= 2**31:
        return pa.repeat(pa.scalar(value, pa.string()), rows)
    offsets = np.arange(0, (rows + 1) * len(data), len(data), dtype=np.int32)
    chars = np.frombuffer(data, dtype=np.uint8)
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(np.tile(chars, rows)))
