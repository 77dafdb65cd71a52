"""The files of a table as written, and its commit history, read without the Delta commit layer: what
a run's files are named (the stages name them so), how they are found and their footers read, and
what batchscore recorded with each commit. Below both pipeline/stages and pipeline/quality, which
use it, and pipeline/commit/tables.py, which builds the table's transactions on it."""

from __future__ import annotations

import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq

from pipeline.filestats import FileStats, stats_from_footer
from pipeline.storage import Location, list_files

# what a commit records in the Delta log's commitInfo: the key its metadata is under
METADATA_KEY = "batchscore"
# pyarrow's hive writer names a null partition value like this; Delta wants null
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass
class TableFile:
    """A Parquet file written under a table's location (path relative to the table root)."""

    path: str
    size: int
    rows: int
    mtime_ms: int
    partition: dict[str, str | None]
    stats: FileStats | None = None  # what its footer says of its rows; None: it says nothing usable


def partition_values(relpath: str) -> dict[str, str | None]:
    """`ds=2026-10-01/part-x.parquet` -> {"ds": "2026-10-01"} (hive directory segments)."""
    values: dict[str, str | None] = {}
    for seg in posixpath.dirname(relpath).split("/"):
        if "=" in seg:
            k, v = seg.split("=", 1)
            # pyarrow's hive writer names a null partition value like Hive does; Delta wants null
            values[unquote(k)] = None if v == HIVE_NULL else unquote(v)
    return values


def run_file_prefix(run_id: str, kind: str = "part", attempt: str = "") -> str:
    """Every file a run writes starts with this (part- predictions, dl- dead letters), then the
    attempt (the process, see pipeline/run/attempt.py): `part-RUN.ATTEMPT.`. The '.' cannot occur
    in a run id or an attempt id, so run `a` never claims the files of run `a-b`, nor one attempt
    another's. Without `attempt`: every attempt's files of the run (and those of older versions)."""
    return f"{kind}-{run_id}.{attempt}." if attempt else f"{kind}-{run_id}."


def list_run_files(
    table: Location, col: str, date: str, run_id: str, kind: str = "part", attempt: str = ""
) -> list:
    """This run's (attempt's) files of one date under a table, as listed (names only)."""
    prefix = run_file_prefix(run_id, kind, attempt)
    return [
        i
        for i in list_files(table.join(f"{col}={date}"), suffix=".parquet")
        if i.base_name.startswith(prefix)
    ]


def run_files(
    table: Location, col: str, date: str, run_id: str, kind: str = "part", attempt: str = ""
) -> list[TableFile]:
    """This run's (attempt's) complete files of one date under a table, with the row count and the
    stats each footer holds (footers read in parallel threads; no rows are read)."""
    infos = list_run_files(table, col, date, run_id, kind, attempt)

    def footer(info) -> TableFile:
        with table.fs.open_input_file(info.path) as f:
            md = pq.ParquetFile(f).metadata
        rel = posixpath.relpath(info.path, table.path)
        mtime = int(info.mtime.timestamp() * 1000) if info.mtime is not None else 0
        return TableFile(
            path=rel,
            size=info.size,
            rows=md.num_rows,
            mtime_ms=mtime,
            partition=partition_values(rel),
            stats=stats_from_footer(md),
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(footer, infos))


def commits_of_history(table, limit: int | None = None) -> list[dict[str, Any]]:
    """batchscore's commits, newest first: each with its table `version` and our metadata."""
    out = []
    for entry in table.history(limit):
        meta = entry.get(METADATA_KEY)
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                meta = None
        if isinstance(meta, dict):
            out.append({**meta, "version": entry["version"]})
    return out
