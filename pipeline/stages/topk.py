"""Top-K per group (output.top_k): the scored rows of each group and date reduced to one row that
holds the k best items as list columns.

Memory is bounded by k per group, not by a group's size:

    scored block --TopKPartial--> at most k rows per group and block (+ the group's row count)
                 --hash shuffle by (date, group)--> every partial of a group in one partition
                 --TopKMerge--> one row per group: item keys and heads as lists, ranked

A group with a million candidates spread over 40 blocks reaches its merge task as at most 40 k
rows. `max_group_rows` caps what one merge task may hold of one group (a group spread over more
blocks than expected stops the run, naming the group and its size).

Ranking: `order_by` descending, ties by the item keys ascending (then by the other heads), so the
lists are the same whatever the block boundaries. Rows whose `order_by` score is not finite (NaN,
inf) cannot be ranked: they go to the dead-letter table with NON_FINITE_SCORE."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.arrays import from_numpy, to_numpy
from pipeline.errors import StageError

NON_FINITE_SCORE = "non-finite score (NaN or inf cannot be ranked for top_k)"


@dataclass(frozen=True)
class TopKSpec:
    partition_column: str
    group_by: list[str]
    items: list[str]
    heads: list[str]
    order_by: str
    k: int
    count_column: str
    max_group_rows: int

    @classmethod
    def from_config(cls, cfg: Any) -> TopKSpec:
        out, top = cfg.output, cfg.output.top_k
        return cls(
            partition_column=cfg.input.partition_column,
            group_by=list(top.group_by),
            items=out.item_columns,
            heads=out.value_columns,
            order_by=out.order_by,
            k=top.k,
            count_column=top.count_column,
            max_group_rows=top.max_group_rows,
        )

    @property
    def group_columns(self) -> list[str]:
        """What identifies a group: the date and the group_by columns."""
        return [self.partition_column, *self.group_by]

    @property
    def sort_keys(self) -> list[tuple[str, str, str]]:
        return [
            *((c, "ascending", "at_end") for c in self.group_columns),
            (self.order_by, "descending", "at_end"),
            *((c, "ascending", "at_end") for c in self.items),
            *((h, "ascending", "at_end") for h in self.heads if h != self.order_by),
        ]


def _same_as_previous(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Row i equals row i-1 (nulls equal to nulls); row 0 is False."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if n < 2:
        return np.zeros(n, dtype=bool)
    a, b = col.slice(1), col.slice(0, n - 1)
    eq = pc.fill_null(pc.equal(a, b), False)
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    same = pc.or_(eq, both_null).to_numpy(zero_copy_only=False)
    return np.concatenate([[False], same])


def ranked(table: pa.Table, spec: TopKSpec) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """`table` sorted by group then rank; the start row of each group; each row's rank in its group."""
    table = table.take(pc.sort_indices(table, sort_keys=spec.sort_keys))
    n = table.num_rows
    same = np.ones(n, dtype=bool)
    if n:
        same[0] = False
    for c in spec.group_columns:
        same &= _same_as_previous(table.column(c))
    starts = np.flatnonzero(~same)
    group_of_row = np.cumsum(~same) - 1
    rank = np.arange(n) - starts[group_of_row] if n else np.zeros(0, dtype=np.int64)
    return table, starts, rank


def _group_name(table: pa.Table, row: int, spec: TopKSpec) -> str:
    return ", ".join(f"{c}={table.column(c)[row].as_py()!r}" for c in spec.group_columns)


class TopKPartial:
    """Map stage after the predictor: each block's top k rows per group, with the group's number of
    scored rows in the block (on its first row, 0 on the others). Rows with a non-finite order_by
    score go to the dead letters."""

    name = "top-k partial"

    def __init__(self, spec: TopKSpec, dead_letter: Any = None) -> None:
        self.spec = spec
        self.dead_letter = dead_letter
        self.columns = [*spec.group_columns, *spec.items, *spec.heads, "model_version", "run_id"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        spec = self.spec
        missing = [c for c in self.columns if c not in batch.column_names]
        if missing:
            raise StageError(
                f"stage {self.name!r}: missing columns {missing}; present columns: {batch.column_names}"
            )
        batch = batch.select(self.columns)
        scores = to_numpy(batch.column(spec.order_by))
        bad = ~np.isfinite(scores)
        if bad.any():
            if self.dead_letter is None:
                raise StageError(f"stage {self.name!r}: {int(bad.sum())} rows: {NON_FINITE_SCORE}")
            reasons = np.full(int(bad.sum()), NON_FINITE_SCORE, dtype=object)
            self.dead_letter.write(batch.filter(from_numpy(bad)), reasons, batch)
            batch = batch.filter(from_numpy(~bad))
        table, starts, rank = ranked(batch, spec)
        sizes = np.diff(np.append(starts, table.num_rows))
        counts = np.zeros(table.num_rows, dtype=np.int64)
        counts[starts] = sizes
        keep = rank < spec.k
        table = table.append_column(spec.count_column, from_numpy(counts))
        return table.filter(from_numpy(keep))


class TopKMerge:
    """Map stage over whole hash partitions (every partial of a group is in one): one row per group
    with the k best items, ranked, the item keys and heads as list columns, and the group's number
    of scored rows."""

    name = "top-k merge"

    def __init__(self, spec: TopKSpec) -> None:
        self.spec = spec

    def __call__(self, batch: pa.Table) -> pa.Table:
        spec = self.spec
        table, starts, rank = ranked(batch, spec)
        n = table.num_rows
        sizes = np.diff(np.append(starts, n))
        if sizes.size and sizes.max() > spec.max_group_rows:
            worst = int(np.argmax(sizes))
            raise StageError(
                f"stage {self.name!r}: group {_group_name(table, int(starts[worst]), spec)} reached its "
                f"merge task as {int(sizes[worst])} rows (k={spec.k} per input block), over "
                f"output.top_k.max_group_rows={spec.max_group_rows}; raise it, or make fewer, larger "
                "input blocks"
            )
        counts = to_numpy(table.column(spec.count_column))
        totals = np.add.reduceat(counts, starts) if n else np.zeros(0, dtype=np.int64)
        keep = rank < spec.k
        kept = table.filter(from_numpy(keep))
        lengths = np.minimum(sizes, spec.k)
        offsets = from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        first = from_numpy(starts, pa.int64())
        cols: dict[str, Any] = {c: table.column(c).take(first) for c in spec.group_columns}
        for c in [*spec.items, *spec.heads]:
            values = kept.column(c).combine_chunks()
            cols[c] = pa.ListArray.from_arrays(offsets, values)
        cols[spec.count_column] = from_numpy(totals, pa.int64())
        cols["model_version"] = table.column("model_version").take(first)
        cols["run_id"] = table.column("run_id").take(first)
        return pa.table(cols)


def default_partitions(input_rows: int) -> int:
    return max(1, min(256, math.ceil(input_rows / 1_000_000)))


def top_k_dataset(ds, spec: TopKSpec, partitions: int, dead_letter: Any = None):
    """The scored rows reduced to one row per group and date (lazy: nothing runs here)."""
    ds = ds.map_batches(
        TopKPartial(spec, dead_letter.tagged("topk") if dead_letter is not None else None),
        batch_format="pyarrow",
        batch_size=None,  # whole blocks: the fewer partials per group, the less to shuffle
    )
    # Ray Data's own map_groups relies on this too: after a hash repartition by keys each
    # partition is one block, so a whole-block batch holds every partial of its groups
    ds = ds.repartition(partitions, keys=spec.group_columns)
    # a group over the cap raises a StageError in the shuffle's reduce: it reaches the user whole
    # because the run's Ray Data context raises stage errors as they are (run/execute.py)
    return ds.map_batches(TopKMerge(spec), batch_format="pyarrow", batch_size=None)
