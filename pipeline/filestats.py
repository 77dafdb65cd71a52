"""What each file a run writes carries in its Parquet footer: the key fingerprint and the score
profile of exactly the rows in that file, computed by the task that writes it from the rows it
writes. The commit then reads footers only (one pass over the data instead of three).

The footer's key-value metadata `batchscore.file_stats` holds JSON:

    {"version": 1, "rows": N,
     "keys": {"columns": [...], "hash": "row_hash64/11", "s1": "<hex>", "s2": "<hex>"},
     "score": {"column": "score", "count": .., "nan": .., "total": .., "total_sq": ..,
               "min": .., "max": .., "sketch": [...]} | null}

The stats are trusted only when they describe the file they are in: `rows` must equal the row count
in the footer's own metadata (a file rewritten since, or stats copied from another file, fail that),
and the key columns and hash must be the ones the commit checks with. A file without usable stats
(written by an older version, or rewritten by another tool: pyarrow does not carry footer key-value
metadata over into a file it writes from a read one) is read instead, as before."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import posixpath
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models.arrays import from_numpy
from models.scoreprofile import Partial, partial_of
from pipeline.keys import HASH_SEED, Fingerprint, fingerprint_of, total
from pipeline.reporting.runs import INPUT_KEYS_DIR, RUNS_DIR
from pipeline.storage import Location, delete_dir, exists, list_files, read_bytes, write_bytes
from pipeline.unitwork import note_file, note_input_keys

STATS_KEY = b"batchscore.file_stats"
VERSION = 1
HASH = f"row_hash64/{HASH_SEED}"


@dataclass
class FileStats:
    """The stats found in one file's footer, checked against that footer."""

    rows: int
    key_columns: list[str]
    hash: str
    fingerprint: Fingerprint
    partials: dict[str, Partial]  # output column (a head, an embedding) -> its profile's partial

    def fingerprint_for(self, key_columns: list[str]) -> Fingerprint | None:
        """The file's key fingerprint, if computed over `key_columns` with the commit's hash."""
        return self.fingerprint if list(key_columns) == self.key_columns and self.hash == HASH else None

    def partial_for(self, column: str) -> Partial | None:
        return self.partials.get(column)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _partial_json(p: Partial) -> dict[str, Any]:
    return {
        "count": p.count,
        "nan": p.nan,
        "total": p.total,
        "total_sq": p.total_sq,
        "min": _finite_or_none(p.min),
        "max": _finite_or_none(p.max),
        "sketch": p.sketch,
    }


def _partial_from_json(score: dict[str, Any]) -> Partial:
    lo, hi = score["min"], score["max"]
    return Partial(
        count=int(score["count"]),
        nan=int(score["nan"]),
        total=float(score["total"]),
        total_sq=float(score["total_sq"]),
        min=math.inf if lo is None else float(lo),
        max=-math.inf if hi is None else float(hi),
        sketch=[float(x) for x in score["sketch"]],
    )


def file_stats(
    table: pa.Table, key_columns: list[str], value_columns: list[str] | None = None
) -> dict[str, Any]:
    """The stats of `table`'s rows, as stored in the footer of the file they are written to: the key
    fingerprint, and the profile partial of each output column (an embedding by its norms)."""
    from models.outputs import profiled_values

    fp = fingerprint_of(table, key_columns)
    present = [c for c in value_columns or [] if c in table.column_names]
    return {
        "version": VERSION,
        "rows": table.num_rows,
        "keys": {"columns": list(key_columns), "hash": HASH, "s1": f"{fp.s1:x}", "s2": f"{fp.s2:x}"},
        "scores": {c: _partial_json(partial_of(profiled_values(table.column(c)))) for c in present},
    }


def write_parquet(
    fs,
    path: str,
    table: pa.Table,
    key_columns: list[str],
    value_columns: list[str] | None = None,
    compression: str | None = "zstd",
) -> None:
    """Write `table` as one Parquet file at `path` with its stats in the footer. The stats are
    computed here, from the very rows written: whatever happened to the rows before, the file
    describes itself."""
    doc = file_stats(table, key_columns, value_columns)
    stats = json.dumps(doc, separators=(",", ":"))
    written = _constants_as_dictionary(table)
    with fs.open_output_stream(path) as f:
        with pq.ParquetWriter(
            f,
            written.schema,
            compression=compression,
            use_dictionary=_dictionary(table),
            store_schema=written is table,
        ) as w:
            w.write_table(written)
            meta = {STATS_KEY: stats}
            if written is not table:  # what Arrow would have stored for `table` itself
                meta = {**(table.schema.metadata or {}), **meta}
                meta[ARROW_SCHEMA_KEY] = base64.b64encode(table.schema.serialize().to_pybytes())
            w.add_key_value_metadata(meta)
        size = f.tell()
    # closed: a unit being noted (pipeline/unitwork.py) may now name it in its attempt record
    note_file(path, size, table.num_rows, {"rows": table.num_rows, **doc["keys"]})


ARROW_SCHEMA_KEY = b"ARROW:schema"
RUN_CONSTANTS = ("model_version", "run_id")  # text columns that hold one value per run


def _constants_as_dictionary(table: pa.Table) -> pa.Table:
    """`table` with its run-constant text columns (RUN_CONSTANTS), when each holds one value, as
    dictionary arrays of that value: Parquet's dictionary encoder then takes the indices as they
    are instead of hashing the same string on every row (a fifth of the write's CPU, measured on
    ids, a score and these two). The file is the one Arrow writes for the plain columns (they
    are dictionary-encoded either way); the caller stores the plain schema, so readers see text.
    `table` itself when there is nothing to change."""
    out = table
    for name in RUN_CONSTANTS:
        if name not in table.column_names or not pa.types.is_string(table.schema.field(name).type):
            continue
        col = table.column(name)
        if not holds_one_value(col):
            continue
        value = col.slice(0, 1)  # the value as a one-row array: not from Python (models.arrays)
        value = value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value
        one = pa.DictionaryArray.from_arrays(from_numpy(np.zeros(len(col), np.int32)), value)
        out = out.set_column(table.schema.get_field_index(name), pa.field(name, one.type), one)
    return out


def holds_one_value(col: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every row holds the same non-null value: one comparison pass, no hashing."""
    return bool(len(col)) and not col.null_count and pc.all(pc.equal(col, col[0])).as_py()


def distinct_values(col: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The column's distinct values; a column of one value (a block's date) without hashing it."""
    return [col[0].as_py()] if holds_one_value(col) else pc.unique(col).to_pylist()


def _dictionary(table: pa.Table) -> list[str]:
    """The columns worth Parquet's dictionary encoding: text and flags (run ids, model versions,
    string keys that repeat). Not numbers: unique ids and scores fill the dictionary page and
    fall back to plain encoding, after hashing the values for nothing (measured: the dictionary
    attempt was half the write's CPU on a file of int64 ids and float scores)."""
    t = pa.types
    kinds = (t.is_string, t.is_large_string, t.is_binary, t.is_large_binary, t.is_boolean, t.is_dictionary)
    return [f.name for f in table.schema if any(k(f.type) for k in kinds)]


def stats_from_footer(md: pq.FileMetaData) -> FileStats | None:
    """The file's stats from its footer metadata, or None when it has none that describe it."""
    raw = (md.metadata or {}).get(STATS_KEY)
    if raw is None:
        return None
    try:
        s = json.loads(raw)
        if s.get("version") != VERSION or s["rows"] != md.num_rows:
            return None
        keys = s["keys"]
        return FileStats(
            rows=int(s["rows"]),
            key_columns=list(keys["columns"]),
            hash=str(keys["hash"]),
            fingerprint=Fingerprint(int(s["rows"]), int(keys["s1"], 16), int(keys["s2"], 16)),
            partials={str(c): _partial_from_json(v) for c, v in (s.get("scores") or {}).items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # not ours, or damaged: the file is read instead


@dataclass
class ReadKeys:
    """The key fingerprints of the input, computed where each input file is read, from the rows the
    read yields downstream (no second read of the input at commit).

    Each read task, once it has read all of its files, records the fingerprint of their rows:
    `<location>/<col>=<date>/<digest of the task's files>.json`, the whole object written at once.
    A task that fails before the end records nothing; a retried task (same files) rewrites its own
    record with the same numbers, so nothing is counted twice. The commit trusts a record only for
    exactly the files it names, with the row count their footers had when the run was planned; the
    files without one are read (a record not written yet, a read task over several dates, a file
    whose rows changed since)."""

    location: Location  # OUTPUT/_runs/RUN/input_keys.ATTEMPT: removed at the end of the attempt
    key_columns: list[str]
    partition_column: str

    def record(
        self, files: list[str], block_stream: Iterable, row_groups: tuple[int, int, int] | None = None
    ) -> Iterator:
        """Yield `block_stream`'s blocks (pyarrow tables) unchanged; after the last, record the
        fingerprint of their rows for `files` (nothing when they hold several dates or lack a key
        column: the commit then reads those files). `row_groups` (start, stop, of): the blocks
        are only those row groups of the one file named; the commit counts the file as recorded
        when its records' ranges cover its row groups exactly once."""
        fp, dates, usable = Fingerprint(), set(), True
        needed = [*self.key_columns, self.partition_column]
        for block in block_stream:
            if usable and not (isinstance(block, pa.Table) and all(c in block.column_names for c in needed)):
                usable = False  # not what the commit compares: it reads these files instead
            if usable and block.num_rows:
                fp = fp + fingerprint_of(block, self.key_columns)
                dates.update(str(d) for d in distinct_values(block.column(self.partition_column)))
            yield block
        if usable and len(dates) <= 1 and files:
            (date,) = dates or {_date_of(files[0], self.partition_column)}
            doc = {
                "files": sorted(files),
                "key_columns": self.key_columns,
                "hash": HASH,
                "rows": fp.rows,
                "s1": f"{fp.s1:x}",
                "s2": f"{fp.s2:x}",
            }
            names = list(files)
            if row_groups is not None:
                doc["row_groups"] = list(row_groups)
                names.append("row groups {}-{} of {}".format(*row_groups))  # a record per range
            # an optimization only: without the record, the commit reads these files
            with contextlib.suppress(OSError):
                write_bytes(self._dir(date).join(f"{_digest(names)}.json"), json.dumps(doc).encode())
            note_input_keys(
                files, doc.get("row_groups"), {k: doc[k] for k in ("key_columns", "hash", "rows", "s1", "s2")}
            )

    def write_record(
        self, date: str, files: list[str], keys: dict[str, Any], row_groups: list[int] | None
    ) -> None:
        """Write the record a read of `files` (row groups [start, stop, of] of one file) would
        have made, from `keys` as noted then: a resumed run's adopted input (pipeline/run/resume.py)."""
        doc = {"files": sorted(files), **{k: keys[k] for k in ("key_columns", "hash", "rows", "s1", "s2")}}
        names = list(files)
        if row_groups is not None:
            doc["row_groups"] = list(row_groups)
            names.append("row groups {}-{} of {}".format(*row_groups))
        write_bytes(self._dir(date).join(f"{_digest(names)}.json"), json.dumps(doc).encode())

    def _dir(self, date: str) -> Location:
        return self.location.join(f"{self.partition_column}={date}")

    def fingerprint(self, date: str, files: dict[str, int]) -> tuple[Fingerprint, list[str]]:
        """The recorded fingerprint of the date's files (`files`: path -> rows as planned), and the
        files no usable record covers (to be read)."""
        infos = list_files(self._dir(date), suffix=".json") if exists(self._dir(date)) else []
        with ThreadPoolExecutor(max_workers=16) as pool:
            loaded = [r for r in pool.map(self._load, infos) if r is not None]
        records = [(names, fp) for names, fp, groups in loaded if groups is None]
        records += _whole_files(loaded)
        usable = [
            (names, fp)
            for names, fp in records
            if set(names) <= files.keys() and fp.rows == sum(files[f] for f in names)
        ]
        named = Counter(f for names, _ in usable for f in names)
        usable = [(names, fp) for names, fp in usable if all(named[f] == 1 for f in names)]  # overlap: read
        covered = {f for names, _ in usable for f in names}
        return total([fp for _, fp in usable]), sorted(f for f in files if f not in covered)

    def _load(self, info) -> tuple[list[str], Fingerprint, tuple[int, int, int] | None] | None:
        """(files, fingerprint, row-group range or None) of a record made with this run's key
        columns and hash, else None."""
        try:
            r = json.loads(read_bytes(Location(self.location.fs, info.path, info.path)))
            if r["key_columns"] != self.key_columns or r["hash"] != HASH:
                return None
            groups = r.get("row_groups")
            fp = Fingerprint(int(r["rows"]), int(r["s1"], 16), int(r["s2"], 16))
            return [str(f) for f in r["files"]], fp, None if groups is None else _range_of(groups)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or not ours: its files are read instead


def vacuum_input_keys(output: Location, retention_hours: float, dry_run: bool = False) -> list[str]:
    """Delete the key records that runs killed before their end left behind
    (OUTPUT/_runs/RUN/input_keys.ATTEMPT, or input_keys from older versions; a run that ends
    deletes its own), once the newest file in the folder is older than `retention_hours`: the age
    vacuum waits for before it deletes a run's uncommitted data files, so a run still reading keeps
    its records. Nothing else under _runs (report.json, ...) is touched. Returns the URIs of the
    folders deleted (or, `dry_run`, to be)."""
    cutoff_ns = time.time_ns() - int(retention_hours * 3600 * 1e9)
    stale = [
        run for run, newest in _input_keys_newest(output).items() if newest is not None and newest < cutoff_ns
    ]
    folders = [output.join(RUNS_DIR, run) for run in sorted(stale)]
    if not dry_run:
        for folder in folders:
            delete_dir(folder)
    return [f.uri for f in folders]


def _input_keys_newest(output: Location) -> dict[str, int | None]:
    """RUN/input_keys[.ATTEMPT] -> the newest mtime (ns) of the files in that folder, or of the
    folder and its subfolders when it holds no file (a run killed before its first record); None
    when storage gives no times. One listing of _runs."""
    runs = output.join(RUNS_DIR)
    listing = output.fs.get_file_info(pafs.FileSelector(runs.path, recursive=True, allow_not_found=True))
    times: dict[str, tuple[list[int], list[int]]] = {}
    for info in listing:
        run, _, rest = posixpath.relpath(info.path, runs.path).partition("/")
        folder = rest.split("/")[0]
        if folder != INPUT_KEYS_DIR and not folder.startswith(INPUT_KEYS_DIR + "."):
            continue
        files, folders = times.setdefault(f"{run}/{folder}", ([], []))
        if info.mtime_ns is not None:
            (files if info.type == pafs.FileType.File else folders).append(info.mtime_ns)
    return {
        run: max(files or folders) if files or folders else None for run, (files, folders) in times.items()
    }


def _range_of(groups: Any) -> tuple[int, int, int]:
    start, stop, of = (int(g) for g in groups)
    if not 0 <= start < stop <= of:
        raise ValueError(f"not a row-group range: {groups}")
    return start, stop, of


def _whole_files(loaded: list) -> list[tuple[list[str], Fingerprint]]:
    """The files whose row-group records tile them: ranges of one count that cover 0..count
    end to end, each once (a retried read rewrites its own range's record). A file with a gap
    or an overlap gets no record here, and the commit reads it."""
    pieces: dict[str, list[tuple[tuple[int, int, int], Fingerprint]]] = {}
    for names, fp, groups in loaded:
        if groups is not None and len(names) == 1:
            pieces.setdefault(names[0], []).append((groups, fp))
    whole = []
    for path, parts in pieces.items():
        parts.sort(key=lambda p: p[0])
        count, reached = parts[0][0][2], 0
        for (start, stop, of), _ in parts:
            if of != count or start != reached:
                break  # another count, a gap or an overlap
            reached = stop
        else:
            if reached == count:
                whole.append(([path], total([fp for _, fp in parts])))
    return whole


def _digest(files: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(files)).encode()).hexdigest()[:20]


def _date_of(path: str, col: str) -> str:
    """The hive value of `col` in a file's path (for a file that yielded no rows)."""
    for seg in path.split("/"):
        if seg.startswith(f"{col}="):
            return unquote(seg.split("=", 1)[1])
    return ""
