"""Where written rows go, for both runners: one directory per partition value (Hive layout) and
files of near-equal size up to the configured rows per file. No Ray here: the local runner
(pipeline/run/local.py) writes without it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filestats import holds_one_value, write_parquet
from pipeline.storage import Location, is_s3
from pipeline.tablefiles import HIVE_NULL

if TYPE_CHECKING:
    from pipeline.config import OutputConfig


def split_by_partition(table: pa.Table, columns: list[str]) -> list[tuple[str, pa.Table]]:
    """(hive directory, rows without the partition columns) per distinct partition value, in a
    fixed order (a retried task names its files as the first attempt did). Values are written as
    Arrow casts them to strings, URI-escaped, null as Hive's default partition (as pyarrow's hive
    partitioning writes them)."""
    one = _single_partition(table, columns)
    if one is not None:  # the usual case (a unit of one date): no grouping, no filtered copy
        return [(one, table.drop_columns(columns))]
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


def _single_partition(table: pa.Table, columns: list[str]) -> str | None:
    """The hive directory when every row has the same non-null value in each partition column
    (one comparison pass per column, no hashing); None when they differ, or for an empty table."""
    if not table.num_rows:
        return None
    parts = []
    for c in columns:
        col = table.column(c)
        if not holds_one_value(col):
            return None
        parts.append(f"{c}={quote(pc.cast(col[0], pa.string()).as_py(), safe='')}")
    return "/".join(parts)


def even_slices(num_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """(offset, length) of ceil(num_rows / max_rows) slices of near-equal length: 1.2 targets
    make two files of 0.6, not one full file and a small one."""
    n = max(1, math.ceil(num_rows / max_rows))
    bounds = [round(i * num_rows / n) for i in range(n + 1)]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@dataclass
class OutputFiles:
    """How prediction files are written, for either runner: under `path` on `fs`, one directory per
    partition value, files of at most `target` rows, each with its rows' stats in the footer."""

    fs: Any
    path: str
    partition_cols: list[str]
    target: int
    key_columns: list[str]
    value_columns: list[str]
    compression: str | None
    make_dirs: bool

    @classmethod
    def for_output(cls, table: Location, out: OutputConfig) -> OutputFiles:
        return cls(
            fs=table.fs,
            path=table.path,
            partition_cols=list(out.partition_columns),
            target=out.target_rows_per_file,
            # top-K files hold one row per group, its item keys as lists: their keys are the group's
            key_columns=list(out.top_k.group_by if out.top_k is not None else out.key_columns),
            value_columns=list(out.value_columns),
            compression=None if out.compression == "none" else out.compression,
            make_dirs=not is_s3(table.uri),  # S3 has no directories to make
        )

    def write(self, rows: pa.Table, name_of: Callable[[int], str]) -> int:
        """Write `rows` split by partition and into even slices of at most the target; the i-th
        file of this call is named `name_of(i)`. Returns the files written."""
        i = 0
        for directory, part in split_by_partition(rows, self.partition_cols):
            if self.make_dirs:
                self.fs.create_dir(f"{self.path}/{directory}", recursive=True)
            for offset, length in even_slices(part.num_rows, self.target):
                write_parquet(
                    self.fs,
                    f"{self.path}/{directory}/{name_of(i)}",
                    part.slice(offset, length),
                    self.key_columns,
                    self.value_columns,
                    self.compression,
                )
                i += 1
        return i
