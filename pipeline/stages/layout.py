"""Where written rows go, for both runners: one directory per partition value (Hive layout) and
files of near-equal size up to the configured rows per file. No Ray here: the local runner
(pipeline/run/local.py) writes without it."""

from __future__ import annotations

import math
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.commit.tables import HIVE_NULL


def split_by_partition(table: pa.Table, columns: list[str]) -> list[tuple[str, pa.Table]]:
    """(hive directory, rows without the partition columns) per distinct partition value, in a
    fixed order (a retried task names its files as the first attempt did). Values are written as
    Arrow casts them to strings, URI-escaped, null as Hive's default partition (as pyarrow's hive
    partitioning writes them)."""
    text = {c: pc.cast(table.column(c), pa.string()) for c in columns}
    combos = pa.table(text).group_by(columns).aggregate([]).to_pylist()
    out = []
    for combo in sorted(combos, key=lambda c: [(v is None, v or "") for v in c.values()]):
        mask = None
        for c in columns:
            v = combo[c]
            m = pc.is_null(text[c]) if v is None else pc.fill_null(pc.equal(text[c], v), False)
            mask = m if mask is None else pc.and_(mask, m)
        directory = "/".join(f"{c}={HIVE_NULL if v is None else quote(v, safe='')}" for c, v in combo.items())
        out.append((directory, table.filter(mask).drop_columns(columns)))
    return out


def even_slices(num_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """(offset, length) of ceil(num_rows / max_rows) slices of near-equal length: 1.2 targets
    make two files of 0.6, not one full file and a small one."""
    n = max(1, math.ceil(num_rows / max_rows))
    bounds = [round(i * num_rows / n) for i in range(n + 1)]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
