"""Reconciliation of a top-K date (output.top_k): groups instead of rows.

A top-K file holds one row per group, with the group's number of scored rows (`count_column`) and
its ranked lists. Per date, before anything is committed:

  - rows: the input rows = the groups' scored rows (sum of count_column) + dead-letter rows;
  - keys (verify='keys'): the multiset of the input's group keys = each output group's key counted
    count_column times + the dead letters' group keys (hash sums weighted by count_column, so the
    driver handles a few numbers per file): a group lost, or rows counted twice, changes them;
  - groups: no group appears in two output rows (a distributed count by group over the date's
    output, one row per group: the input is never grouped for it);
  - lists: each holds min(k, count_column) items, sorted by order_by, highest first.

Together: every group of the input appears exactly once, with all its rows accounted for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.keys import HASH_SEED, Fingerprint, total
from pipeline.raystate import running_ray
from pipeline.storage import map_files


@dataclass
class TopKCheck:
    group_by: list[str]
    count_column: str
    order_by: str
    k: int

    @classmethod
    def from_config(cls, cfg) -> TopKCheck:
        top = cfg.output.top_k
        return cls(list(top.group_by), top.count_column, cfg.output.order_by, top.k)


@dataclass
class GroupFileStats:
    groups: int
    candidates: int
    fingerprint: Fingerprint  # group keys weighted by their count of scored rows
    bad_lists: int
    example: str | None  # the first group whose list is wrong


def _file_stats(fs, path: str, check: TopKCheck) -> GroupFileStats:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from models.features import row_hash64

    with fs.open_input_file(path) as f:
        table = pq.read_table(f, columns=[*check.group_by, check.count_column, check.order_by])
    n = table.column(check.count_column).to_numpy().astype(np.uint64)
    h = row_hash64([table.column(c) for c in check.group_by], seed=HASH_SEED)
    s1 = int(np.multiply(n, h, dtype=np.uint64).sum(dtype=np.uint64))
    s2 = int(np.multiply(n, np.multiply(h, h, dtype=np.uint64), dtype=np.uint64).sum(dtype=np.uint64))
    scores = table.column(check.order_by).combine_chunks()
    lengths = pc.list_value_length(scores).to_numpy(zero_copy_only=False)
    bad = lengths != np.minimum(n.astype(np.int64), check.k)
    values = scores.flatten().to_numpy(zero_copy_only=False)
    if values.size > 1:
        rising = np.flatnonzero(values[1:] > values[:-1]) + 1  # a value above the one before it
        starts = np.cumsum(lengths) - lengths
        rising = rising[~np.isin(rising, starts)]  # ...within the same list
        bad[np.searchsorted(starts, rising, side="right") - 1] = True
    example = None
    if bad.any():
        i = int(np.argmax(bad))
        example = ", ".join(f"{c}={table.column(c)[i].as_py()!r}" for c in check.group_by)
    fp = Fingerprint(int(n.sum()), s1, s2)
    return GroupFileStats(table.num_rows, int(n.sum()), fp, int(bad.sum()), example)


def group_file_stats(fs, paths: list[str], check: TopKCheck) -> list[GroupFileStats]:
    return map_files(_file_stats, fs, paths, check)


def duplicate_groups(fs, paths: list[str], group_by: list[str], limit: int = 3) -> list[dict]:
    """Up to `limit` groups that appear in more than one row of the files, with their count: a
    distributed count by group (Ray Data) when Ray runs, else in this process."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not paths:
        return []

    def over_one(counts: pa.Table, name: str) -> pa.Table:
        return counts.filter(pc.greater(counts.column(name), 1))

    if running_ray() is not None:
        import ray.data

        # select_columns, not columns= (deprecated in Ray 2.60, it warned on the user's terminal);
        # Ray pushes the projection into the read all the same
        ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(group_by)
        # partitions: one per file, not Ray's default of 200 (an actor each, seconds to start)
        counts = ds.groupby(group_by, num_partitions=max(1, min(len(paths), 64))).count()
        found = counts.map_batches(lambda b: over_one(b, "count()"), batch_format="pyarrow")
        return [_rows_named(r, "count()") for r in found.take(limit)]
    import pyarrow.parquet as pq

    tables = []
    for p in paths:
        with fs.open_input_file(p) as f:
            tables.append(pq.read_table(f, columns=group_by))
    counts = pa.concat_tables(tables).group_by(group_by, use_threads=False).aggregate([([], "count_all")])
    found = over_one(counts, "count_all").slice(0, limit).to_pylist()
    return [_rows_named(r, "count_all") for r in found]


def _rows_named(group: dict, count_key: str) -> dict:
    """A group's keys and its row count as `rows` (the aggregate's own name dropped: `{**r,
    "rows": r.pop(k)}` kept it, as the dict was unpacked before the pop)."""
    rows = group.pop(count_key)
    return {**group, "rows": rows}


def check_groups(
    where: str,
    input_rows: int,
    out_fs,
    out_paths: list[str],
    dead_rows: int,
    check: TopKCheck,
    group_keys: tuple[Fingerprint, Fingerprint] | None = None,
) -> str | None:
    """Why a top-K date's written files do not reconcile with its input, or None. `group_keys`
    (verify='keys'): the fingerprints of the input's group keys and of the dead letters'."""
    stats = group_file_stats(out_fs, out_paths, check)
    candidates = sum(s.candidates for s in stats)
    groups = sum(s.groups for s in stats)
    if candidates + dead_rows != input_rows:
        return (
            f"{where}: {input_rows} input rows but {groups} groups holding {candidates} scored rows "
            f"+ {dead_rows} dead-letter rows"
        )
    bad = [s for s in stats if s.bad_lists]
    if bad:
        return (
            f"{where}: {sum(s.bad_lists for s in bad)} group(s) have a list that is not the top "
            f"min(k={check.k}, {check.count_column}) sorted by {check.order_by}, e.g. {bad[0].example}"
        )
    if group_keys is not None:
        fp_in, fp_dead = group_keys
        if fp_in != total([s.fingerprint for s in stats]) + fp_dead:
            return (
                f"{where}: counts match ({input_rows} rows) but the groups differ: some group's rows "
                "are missing while others are counted twice"
            )
    dups = duplicate_groups(out_fs, out_paths, check.group_by)
    if dups:
        return f"{where}: groups appear in more than one output row, e.g. {dups}"
    return None
