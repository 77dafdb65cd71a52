"""The driver's Arrow buffers from an allocator that keeps freed memory for the next batch.

The local runner's threads allocate and free the same large buffers batch after batch (decoded
columns, output columns, Parquet pages). Arrow's default pool (mimalloc) hands freed pages back
to the OS, so each batch faults them in again and the kernel zeroes every page: in `perf record`
of the local runner on the 2-CPU development machine, a third of its CPU was the kernel clearing
pages. With Arrow's jemalloc pool the same 8 M-row run took 4.7-5.0 CPU-s against 5.8-6.9 with
mimalloc (3 runs each, benchmarks/RESULTS.md). The Ray path's driver takes it too: its
duplicate-key check (a file's key column read, hashed, freed, the next file's read) took 1.47-1.57
CPU-s at 12 M keys with jemalloc against 1.77-2.45 with mimalloc (3 runs each, session 11). Not
in the Ray path's replicas: there jemalloc
cost more (0.52-0.58 against 0.32-0.38 us of replica CPU per row, measured the same day), so
they keep Arrow's default. pyarrow offers no setting of mimalloc's own, only the choice of pool.

A user's choice wins: with ARROW_DEFAULT_MEMORY_POOL set, the pool is left as it is."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("batchscore")

POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def reuse_freed_memory() -> str:
    """Make jemalloc Arrow's default pool in this process (a no-op where pyarrow was built
    without it, or where ARROW_DEFAULT_MEMORY_POOL chose a pool); the pool's name."""
    import pyarrow as pa

    if not os.environ.get(POOL_ENV):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc (Windows wheels)
            log.debug(
                "no jemalloc in pyarrow: Arrow buffers stay in %s", pa.default_memory_pool().backend_name
            )
    return pa.default_memory_pool().backend_name
