"""Duplicate keys in the input: found per date before any model work, without the keys on the
driver, and then refused, sent to the dead-letter table, or allowed (`output.duplicate_keys`).

A key repeats within a date (a row of another date is another prediction). Exact and memory-bounded:

1. one task per input file reads only the key columns and hashes each row's key (64 bits,
   `row_hash64`) and splits the hashes by their top bits into `SHARDS` parts;
2. one task per (date, shard) merges that shard of the date's files and finds the hashes that
   occur twice or more (numpy: sort, compare neighbours);
3. only when there are such hashes, one task per file of those dates returns the rows whose hash
   is among them (key values only), and the driver groups them by the key values themselves: two
   keys whose hashes collide are told apart, so the count is exact.

Cost: one more read of the key columns (not the features); the hashes are 8 bytes per input row,
held per shard task (a date's rows / SHARDS * 8 bytes each, in Ray's object store between the two
rounds), never on the driver, which gets only the repeated keys. Without Ray (the local runner) the
files are hashed on threads and a date's hashes (8 bytes per row, in memory at once) sorted once.
The dead-letter mode carries the repeated keys to the preprocess tasks: its memory grows with
the number of repeated keys, not with the input."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.arrays import from_numpy
from models.features import row_hash64
from pipeline.errors import InputError
from pipeline.raystate import running_ray
from pipeline.stages.read import InputPlan

SHARDS = 16
_SHIFT = np.uint64(64 - 4)  # top 4 bits: 16 shards
HASH_SEED = 29
REASON = "duplicate key (output.duplicate_keys=dead_letter)"


@dataclass
class DateDuplicates:
    """The keys of one date that occur more than once, as found in its input files."""

    keys: list[tuple]  # distinct repeated key values, in key-column order
    rows: int  # rows that carry one of them (all occurrences)
    files: dict[tuple, list[str]] = field(default_factory=dict)  # key -> files it is in (examples)
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # their hashes, sorted


@dataclass
class DuplicateKeys:
    """The repeated keys of each date of a run (dates without any are left out)."""

    key_columns: list[str]
    partition_column: str
    dates: dict[str, DateDuplicates] = field(default_factory=dict)

    def repeated(self, batch: pa.Table) -> np.ndarray | None:
        """A bool mask of the batch's rows whose key repeats within their date (None: no such row).
        Hashes pick the few candidate rows; their key values decide (a collision is not a repeat)."""
        if not self.dates or self.partition_column not in batch.column_names:
            return None
        h = row_hash64([batch.column(c) for c in self.key_columns], seed=HASH_SEED)
        dates = batch.column(self.partition_column).to_numpy(zero_copy_only=False).astype(str)
        mask = np.zeros(batch.num_rows, dtype=bool)
        for date, dup in self.dates.items():
            cand = np.flatnonzero((dates == date) & np.isin(h, dup.hashes))
            if len(cand):
                keys = set(dup.keys)
                rows = batch.select(self.key_columns).take(pa.array(cand)).to_pylist()
                mask[cand] = [tuple(r[c] for c in self.key_columns) in keys for r in rows]
        return mask if mask.any() else None


def _keys_of(fs, path: str, key_columns: list[str]) -> pa.Table:
    """The file's key columns, rows with a null key left out (they are dead letters anyway, each
    with its own reason, and many null keys are not one repeated key)."""
    try:
        with fs.open_input_file(path) as f:  # ParquetFile: no dataset machinery for one file
            table = pq.ParquetFile(f).read(columns=key_columns)
    except (pa.ArrowInvalid, OSError) as e:  # as the read stage says it (pipeline/stages/read.py)
        if isinstance(e, OSError) and "AWS Error" in str(e):
            raise OSError(f"{path}: reading its key columns failed: {e}") from e
        raise InputError(f"{path}: not a readable Parquet file (corrupt or truncated?): {e}") from e
    if any(table.column(c).null_count for c in key_columns):
        table = table.drop_null()
    return table


def _file_hashes(fs, path: str, key_columns: list[str]) -> np.ndarray:
    table = _keys_of(fs, path, key_columns)
    return row_hash64([table.column(c) for c in key_columns], seed=HASH_SEED)


def _file_shards(fs, path: str, key_columns: list[str]) -> list[np.ndarray]:
    """Step 1: the file's key hashes split by their top bits (a stable sort of 8-bit shard
    numbers is a radix sort: linear, unlike sorting the hashes themselves)."""
    h = _file_hashes(fs, path, key_columns)
    shard = (h >> _SHIFT).astype(np.uint8)
    h = h[np.argsort(shard, kind="stable")]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=SHARDS))])
    return [h[bounds[s] : bounds[s + 1]] for s in range(SHARDS)]


def _repeated(*shards: np.ndarray) -> np.ndarray:
    """Step 2: the hashes found twice or more in one shard of a date's files, sorted, distinct."""
    return repeated_values(np.concatenate(shards) if shards else np.zeros(0, np.uint64))


def repeated_values(h: np.ndarray) -> np.ndarray:
    """The values (uint64 hashes) that occur twice or more in `h`, sorted, distinct.

    A sort of every hash is most of the check's cost (a date's rows, every run), so the sort is
    of their top 32 bits (half the bytes: a third faster, measured at 4 M rows); a top half seen
    twice marks candidates (the true repeats, and pairs that share only those bits: about
    n^2 / 2^33 of them, a few thousand at 4 M rows), picked out through a small flag table and
    settled by their whole hash. When such pairs would be too many, every hash is sorted."""
    if len(h) < 1 << 14:  # small: one sort is as cheap
        return _sorted_repeats(h)
    top = (h >> np.uint64(32)).astype(np.uint32)
    ordered = np.sort(top)
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(twice):
        return np.zeros(0, np.uint64)
    if len(twice) > len(h) >> 6:
        return _sorted_repeats(h)
    bits = int(np.clip(int(len(twice)).bit_length() + 6, 16, 26))  # flags over ~1/64 of the slots
    flag = np.zeros(1 << bits, dtype=bool)
    flag[twice >> np.uint32(32 - bits)] = True
    candidates = h[flag[top >> np.uint32(32 - bits)]]
    return _sorted_repeats(candidates[np.isin((candidates >> np.uint64(32)).astype(np.uint32), twice)])


def _sorted_repeats(h: np.ndarray) -> np.ndarray:
    ordered = np.sort(h)
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


def _rows_with(fs, path: str, key_columns: list[str], hashes: np.ndarray) -> pa.Table:
    """Step 3: the file's key values of the rows whose hash is among `hashes`."""
    table = _keys_of(fs, path, key_columns)
    h = row_hash64([table.column(c) for c in key_columns], seed=HASH_SEED)
    return table.filter(from_numpy(np.isin(h, hashes)))


def _repeated_hashes(fs, plan: InputPlan, key_columns: list[str], on_ray: bool) -> dict[str, np.ndarray]:
    """Steps 1 and 2 for every date: date -> the hashes that repeat in it (Ray tasks when Ray runs
    and `on_ray`, the shards staying in the object store between the rounds)."""
    ray = running_ray() if on_ray else None
    out = {}
    if ray is None:  # threads (reading and hashing release the GIL); one sort of the date's hashes
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for part in plan.partitions:
                hashes = pool.map(lambda f: _file_hashes(fs, f.path, key_columns), part.files)
                out[part.date] = _repeated(*hashes)
        return out
    fs_ref = ray.put(fs)
    step1 = ray.remote(num_cpus=1, num_returns=SHARDS, max_retries=3, retry_exceptions=[OSError])(
        _file_shards
    )
    step2 = ray.remote(num_cpus=1)(_repeated)
    pending = {}
    for part in plan.partitions:
        refs = [step1.remote(fs_ref, f.path, key_columns) for f in part.files]
        pending[part.date] = [step2.remote(*[r[s] for r in refs]) for s in range(SHARDS)]
    for date, shard_refs in pending.items():
        out[date] = np.concatenate(ray.get(shard_refs))
    return out


def find_duplicates(plan: InputPlan, key_columns: list[str], on_ray: bool = True) -> DuplicateKeys:
    """The keys that repeat within each date of `plan`, exactly (see the module's docstring).
    `on_ray`: on Ray tasks when Ray is running; False: on this process's threads whatever Ray
    does (the check made beside the start of a Ray of our own: whether Ray is up by the time it
    looks must not decide it, and new worker processes would cost more than the check)."""
    from pipeline.storage import map_files

    fs, found = plan.root.fs, DuplicateKeys(list(key_columns), plan.partition_column)
    repeated = _repeated_hashes(fs, plan, key_columns, on_ray)
    for part in plan.partitions:
        hashes = repeated[part.date]
        if not len(hashes):
            continue
        paths = [f.path for f in part.files]
        tables = map_files(_rows_with, fs, paths, key_columns, hashes, on_ray=on_ray)
        counts: dict[tuple, int] = {}
        files: dict[tuple, list[str]] = {}
        for path, t in zip(paths, tables, strict=True):
            for r in t.to_pylist():
                k = tuple(r[c] for c in key_columns)
                counts[k] = counts.get(k, 0) + 1
                files.setdefault(k, [])
                if path not in files[k]:
                    files[k].append(path)
        keys = [k for k, n in counts.items() if n > 1]
        if keys:
            rows = sum(counts[k] for k in keys)
            found.dates[part.date] = DateDuplicates(keys, rows, {k: files[k] for k in keys[:3]}, hashes)
    return found


def refuse(found: DuplicateKeys) -> None:
    """`output.duplicate_keys: fail`: an input error naming each date, its counts and examples."""
    if not found.dates:
        return
    lines = []
    col, names = found.partition_column, found.key_columns
    for date, dup in sorted(found.dates.items()):
        examples = "; ".join(
            f"{dict(zip(names, k, strict=True))} in {', '.join(p.rsplit('/', 1)[-1] for p in paths)}"
            for k, paths in dup.files.items()
        )
        lines.append(
            f"{col}={date}: {len(dup.keys)} key(s) occur more than once ({dup.rows} rows), e.g. {examples}"
        )
    raise InputError(
        f"duplicate keys {names} in the input (output.duplicate_keys=fail; nothing was scored):\n  "
        + "\n  ".join(lines)
        + "\n  set output.duplicate_keys to dead_letter (their rows go to the dead-letter table) or "
        "allow (one prediction per input row) to score them"
    )
