"""A challenger's committed scores against the champion's, per date, read from the two tables as
any Delta reader sees them and joined by key (the measures: pipeline/quality/compare.py).

A date of at most `compare.max_rows` rows is compared on every row. A bigger one on a deterministic
sample: the rows whose key hash (with compare.group_by: the group's, so groups stay whole) falls in
the first max_rows/rows of the hash range, the same keys on both sides. Only the key columns and
the compared head are read, batch by batch, and only the sample is kept."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.features import row_hash64
from pipeline.commit.partitions import brief_error
from pipeline.config import JobConfig
from pipeline.quality.compare import Measures, Thresholds, compare, group_keys
from pipeline.reporting.schema import ChallengerResult, Comparison

log = logging.getLogger("batchscore")


def thresholds_of(cfg: JobConfig) -> Thresholds:
    c = cfg.compare
    return Thresholds(
        c.spearman_min, c.mean_shift_max, c.quantile_shift_max, c.psi_max, c.jaccard_min, c.top1_changed_max
    )


def compared_columns(cfg: JobConfig, job: JobConfig, chosen: str | None) -> tuple[str, str]:
    """(champion head, challenger head) compared."""
    champ = cfg.compare.score_column or cfg.output.value_columns[0]
    heads = job.output.value_columns
    return champ, chosen or (champ if champ in heads else heads[0])


class PairSample:
    """(champion score, challenger score, group id) of the rows both models scored in this process,
    collected as they are scored (the local runner: the same rows of one slice go through both
    models, so they are aligned without a join and no table is read again), kept in input order
    (each slice's place in the input: file, row), which breaks the top-k's ties as the table path's
    key-hash order does: the same way on both sides. No key is hashed for that. A date over
    compare.max_rows keeps the rows whose key hash (group hash with group_by) is in the first
    max_rows/rows of the range, as the table path does. The group id: the value itself when the
    group is one integer column, else a 64-bit hash of the group's columns.

    Once a date's last input file is scored (`file_scored`), its measures are computed on a thread
    of their own while the run writes, commits and reports (numpy's sorts leave the GIL to them);
    `result` waits for them. Whether the challenger's date is then committed decides whether they
    are reported (pipeline/run/challengers.py)."""

    def __init__(
        self,
        cfg: JobConfig,
        champ_col: str,
        chall_col: str,
        rows_per_date: dict[str, int],
        files_per_date: dict[str, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.keys, self.group_by = cfg.output.key_columns, cfg.compare.group_by
        self.champ_col, self.chall_col = champ_col, chall_col
        self.cut = {
            d: np.uint64(min(int(min(1.0, cfg.compare.max_rows / max(n, 1)) * 2**64), 2**64 - 1))
            for d, n in rows_per_date.items()
        }
        self.sampled = {d: cfg.compare.max_rows < n for d, n in rows_per_date.items()}
        # per date: the blocks the pairs are copied into, and (place in the input, block, start,
        # rows) of each batch
        self.blocks: dict[str, list[np.ndarray]] = {d: [] for d in rows_per_date}
        self.parts: dict[str, list[tuple[Any, int, int, int]]] = {d: [] for d in rows_per_date}
        self._filled: dict[str, int] = {d: 0 for d in rows_per_date}
        self.files_left = dict(files_per_date or {})
        self._measured: dict[str, Future] = {}
        self.seconds: dict[str, float] = {}  # what each date's measures took
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def add(self, date: str, where: tuple, champion: pa.Table, challenger: pa.Table) -> None:
        """The pairs of one batch; `where`: its place in the input (ordered like the input)."""
        a = champion.column(self.champ_col).to_numpy(zero_copy_only=False)
        b = challenger.column(self.chall_col).to_numpy(zero_copy_only=False)
        g = group_ids([champion.column(k) for k in self.group_by]) if self.group_by else None
        if self.sampled[date]:
            cols = self.group_by or self.keys
            keep = row_hash64([champion.column(k) for k in cols], seed=11 if self.group_by else 13)
            keep = keep < self.cut[date]
            a, b, g = a[keep], b[keep], (g[keep] if g is not None else None)
        n = len(a)
        with self._lock:  # copied into the date's blocks: no batch's arrays are held (see BLOCK_ROWS)
            blocks = self.blocks[date]
            if not blocks or self._filled[date] + n > blocks[-1].shape[1]:
                blocks.append(np.empty((3, max(BLOCK_ROWS, n)), dtype=np.uint64))  # scores' bits, ids
                self._filled[date] = 0
            block, start = blocks[-1], self._filled[date]
            block[0, start : start + n] = np.asarray(a, dtype=np.float64).view(np.uint64)
            block[1, start : start + n] = np.asarray(b, dtype=np.float64).view(np.uint64)
            if g is not None:
                block[2, start : start + n] = group_keys(g)
            self._filled[date] = start + n
            self.parts[date].append((where, len(blocks) - 1, start, n))

    def file_scored(self, date: str) -> None:
        """One input file of `date` is scored by both models; after its last, the date's measures
        start on this sample's thread."""
        with self._lock:
            if date not in self.files_left:
                return
            self.files_left[date] -= 1
            if self.files_left[date] or date in self._measured:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="batchscore-compare")
            self._measured[date] = self._pool.submit(self._measure, date)

    def has(self, date: str) -> bool:
        return bool(self.parts.get(date)) or date in self._measured

    def result(self, date: str) -> tuple[Measures, list]:
        """The date's measures and plotted pairs: computed since its last file was scored, or now."""
        with self._lock:
            future = self._measured.get(date)
        return future.result() if future is not None else self._measure(date)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _measure(self, date: str) -> tuple[Measures, list]:
        t0 = time.perf_counter()
        try:
            arrays = self.arrays(date)
            with self._lock:  # copied out: the blocks go
                self.blocks[date] = []
            return measured(self.cfg, *arrays)
        finally:
            self.seconds[date] = time.perf_counter() - t0

    def arrays(self, date: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The date's (champion, challenger, group ids or None), in input order."""
        with self._lock:
            parts, blocks = sorted(self.parts.get(date) or [], key=lambda x: x[0]), self.blocks.get(date)
        if not parts or not blocks:
            return np.empty(0), np.empty(0), (np.empty(0, dtype=np.uint64) if self.group_by else None)
        cols = [
            np.concatenate([blocks[k][i, start : start + n] for _, k, start, n in parts])
            for i in range(3 if self.group_by else 2)
        ]
        return cols[0].view(np.float64), cols[1].view(np.float64), (cols[2] if self.group_by else None)


# rows of a block the pairs are copied into: batches kept as their own arrays until the date's
# end were small allocations between the forward pass's big temporaries, and the heap grew around
# them (pipeline/run/local.py's DateFiles has the numbers); 6 MB a block
BLOCK_ROWS = 1 << 18


def group_ids(columns: list[pa.ChunkedArray]) -> np.ndarray:
    """A group id per row: the values of one integer column as they are (no collision; a null,
    never a scored row's key since such rows are dead letters, as 0), else a 64-bit hash of the
    columns (the table path's, `_read`)."""
    if len(columns) == 1 and pa.types.is_integer(columns[0].type):
        col = columns[0]
        return np.asarray((pc.fill_null(col, 0) if col.null_count else col).to_numpy())
    return row_hash64(columns, seed=11)


def compare_dates(cfg: JobConfig, challenger: Any, result: ChallengerResult, dates: list[str]) -> None:
    """Fill `result` with one comparison per date both tables hold (committed now or before):
    from the pairs collected while scoring when there are any, else read from the tables. Its
    `compare_s`: the seconds the comparisons took (the pairs' on their thread, beside the run)."""
    from pipeline.commit.tables import OutputTables

    champ_col, chall_col = compared_columns(cfg, challenger.job, challenger.cfg.compare_column)
    result.champion_column, result.challenger_column = champ_col, chall_col
    pairs = getattr(challenger, "pairs", None)
    rows = {x.date: x.output_rows for x in getattr(challenger, "commits", [])}
    tables: list[Any] = []
    took = 0.0
    for d in dates:
        t0 = time.perf_counter()
        try:
            if pairs is not None and pairs.has(d) and d in rows:
                # the same rows went through both models: each table holds rows[d] of them
                m = pairs.result(d)  # computed beside the writes and commits (or now)
                result.comparisons.append(_comparison(d, rows[d], rows[d], 0, pairs.sampled[d], m))
                took += pairs.seconds.get(d, 0.0)
                continue
            if not tables:  # read back only when a date was not compared as it was scored
                tables += [
                    OutputTables.for_config(cfg).predictions.open(),
                    challenger.tables.predictions.open(),
                ]
            if None in tables:
                break
            if cfg.output.top_k is not None:  # lists per group (pipeline/quality/topk_compare.py)
                from pipeline.quality.topk_compare import compare_top_k_date

                result.comparisons.append(
                    compare_top_k_date(
                        cfg,
                        challenger.job,
                        thresholds_of(cfg),
                        *tables,
                        d,
                        champ_col,
                        chall_col,
                        pairs=getattr(challenger, "pairs_at", None),
                    )
                )
                took += time.perf_counter() - t0
                continue
            result.comparisons.append(compare_date(cfg, *tables, d, champ_col, chall_col))
            took += time.perf_counter() - t0
        except Exception as e:
            log.warning("challenger %s, %s: comparison failed: %s", challenger.name, d, brief_error(e))
    result.compare_s = round(took, 3)
    if result.comparisons:
        bad = any(x.verdict == "disagrees" for x in result.comparisons)
        result.verdict = "disagrees" if bad else "agrees"
    for x in result.comparisons:
        log.info(
            "challenger %s vs champion, %s: %s (spearman %s, psi %s)%s",
            challenger.name,
            x.date,
            x.verdict,
            _f(x.spearman),
            _f(x.psi),
            f": {'; '.join(x.broke)}" if x.broke else "",
        )


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def compare_date(
    cfg: JobConfig, champion: Any, challenger: Any, date: str, champ_col: str, chall_col: str
) -> Comparison:
    """One date's comparison of the two Delta tables (deltalake.DeltaTable). The rows are joined
    on a 64-bit hash of their key (a collision among a date's keys is about 1 in 10^7 at 10^6
    keys) and ordered by it; duplicate keys (output.duplicate_keys allow) count once."""
    keys, col, c = cfg.output.key_columns, cfg.input.partition_column, cfg.compare
    where = pc.field(col) == date
    a_ds, b_ds = champion.to_pyarrow_dataset(), challenger.to_pyarrow_dataset()
    n_a, n_b = a_ds.count_rows(filter=where), b_ds.count_rows(filter=where)
    frac = min(1.0, c.max_rows / max(n_a, n_b, 1))
    ha, sa, ga = _read(a_ds, where, keys, champ_col, c.group_by, frac)
    hb, sb, _ = _read(b_ds, where, keys, chall_col, c.group_by, frac)
    common, ia, ib = np.intersect1d(ha, hb, return_indices=True)
    unmatched = len(ha) + len(hb) - 2 * len(common)
    groups = ga[ia] if ga is not None else None
    return _comparison(date, n_a, n_b, unmatched, frac < 1.0, measured(cfg, sa[ia], sb[ib], groups))


def measured(
    cfg: JobConfig, sa: np.ndarray, sb: np.ndarray, groups: np.ndarray | None
) -> tuple[Measures, list]:
    """The measures of aligned score arrays (their order, by key hash or as the input is, breaks
    ties in the groups' top-k), and the sampled pairs of the page's plot."""
    c = cfg.compare
    ok = np.isfinite(sa) & np.isfinite(sb)
    if not ok.all():
        sa, sb, groups = sa[ok], sb[ok], (groups[ok] if groups is not None else None)
    m = compare(sa, sb, thresholds_of(cfg), c.bins, groups, c.k)
    pick = np.random.default_rng(0).choice(len(sa), min(len(sa), c.plot_points), replace=False)
    return m, np.round(np.c_[sa[pick], sb[pick]], 5).tolist()


def _comparison(
    date: str, n_a: int, n_b: int, unmatched: int, sampled: bool, result: tuple[Measures, list]
) -> Comparison:
    """The report's entry of one date's measures."""
    m, plot = result
    return Comparison(
        **dataclasses.asdict(m),  # every measure, named alike in the report
        date=date,
        champion_rows=n_a,
        challenger_rows=n_b,
        unmatched=unmatched,
        sampled=sampled,
        verdict="disagrees" if m.broke else "agrees",
        plot=plot,
    )


def _read(
    ds: Any, where: Any, keys: list[str], score: str, group_by: list[str] | None, frac: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The date's (key hash, score, group hash or None), batch by batch; with frac < 1 only the
    rows whose key hash (with group_by: group hash, so groups stay whole) is in the first `frac`
    of the hash range: the same keys of either table."""
    cut = np.uint64(min(int(frac * 2**64), 2**64 - 1))
    hs, ss, gs = [], [], []
    for batch in ds.to_batches(columns=list(dict.fromkeys([*keys, score])), filter=where):
        h = row_hash64([batch.column(k) for k in keys], seed=13)
        g = row_hash64([batch.column(k) for k in group_by], seed=11) if group_by else None
        s = batch.column(score).to_numpy(zero_copy_only=False).astype(np.float64)
        if frac < 1.0:
            keep = (g if g is not None else h) < cut
            h, s, g = h[keep], s[keep], (g[keep] if g is not None else None)
        hs.append(h)
        ss.append(s)
        if g is not None:
            gs.append(g)
    cat = lambda xs, t: np.concatenate(xs) if xs else np.empty(0, dtype=t)  # noqa: E731
    return cat(hs, np.uint64), cat(ss, np.float64), (cat(gs, np.uint64) if group_by else None)
