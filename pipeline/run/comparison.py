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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.features import row_hash64
from pipeline.commit.partitions import brief_error
from pipeline.config import JobConfig
from pipeline.quality.compare import Thresholds, compare
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
    """(key hash, champion score, challenger score, group hash) of the rows both models scored in
    this process, collected as they are scored (the local runner: the same rows of one slice go
    through both models, so they are aligned without a join and no table is read again). A date
    over compare.max_rows keeps the rows whose hash (group hash with group_by) is in the first
    max_rows/rows of the range, as the table path does."""

    def __init__(self, cfg: JobConfig, champ_col: str, chall_col: str, rows_per_date: dict[str, int]) -> None:
        self.keys, self.group_by = cfg.output.key_columns, cfg.compare.group_by
        self.champ_col, self.chall_col = champ_col, chall_col
        self.cut = {
            d: np.uint64(min(int(min(1.0, cfg.compare.max_rows / max(n, 1)) * 2**64), 2**64 - 1))
            for d, n in rows_per_date.items()
        }
        self.sampled = {d: cfg.compare.max_rows < n for d, n in rows_per_date.items()}
        self.parts: dict[str, list[tuple[np.ndarray, ...]]] = {d: [] for d in rows_per_date}
        self._lock = threading.Lock()

    def add(self, date: str, champion: pa.Table, challenger: pa.Table) -> None:
        h = row_hash64([champion.column(k) for k in self.keys], seed=13)
        g = row_hash64([champion.column(k) for k in self.group_by], seed=11) if self.group_by else h
        a = champion.column(self.champ_col).to_numpy(zero_copy_only=False)
        b = challenger.column(self.chall_col).to_numpy(zero_copy_only=False)
        if self.sampled[date]:
            keep = g < self.cut[date]
            h, g, a, b = h[keep], g[keep], a[keep], b[keep]
        with self._lock:
            self.parts[date].append((h, a, b, g))

    def arrays(self, date: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The date's pairs ordered by key hash (the table path's order: the same ties)."""
        parts = self.parts.get(date) or []
        h, a, b, g = (np.concatenate([p[i] for p in parts]) if parts else np.empty(0) for i in range(4))
        order = np.argsort(h, kind="stable")
        return (
            h[order],
            a[order].astype(np.float64),
            b[order].astype(np.float64),
            (g[order] if self.group_by else None),
        )


def compare_dates(cfg: JobConfig, challenger: Any, result: ChallengerResult, dates: list[str]) -> None:
    """Fill `result` with one comparison per date both tables hold (committed now or before):
    from the pairs collected while scoring when there are any, else read from the tables."""
    from pipeline.commit.tables import OutputTables

    champ_col, chall_col = compared_columns(cfg, challenger.job, challenger.cfg.compare_column)
    result.champion_column, result.challenger_column = champ_col, chall_col
    pairs = getattr(challenger, "pairs", None)
    rows = {x.date: x.output_rows for x in getattr(challenger, "commits", [])}
    tables: list[Any] = []
    for d in dates:
        try:
            if pairs is not None and pairs.parts.get(d) and d in rows:
                # the same rows went through both models: each table holds rows[d] of them
                h, sa, sb, g = pairs.arrays(d)
                result.comparisons.append(
                    _comparison(cfg, d, rows[d], rows[d], 0, pairs.sampled[d], sa, sb, g)
                )
                continue
            if not tables:  # read back only when a date was not compared as it was scored
                tables += [
                    OutputTables.for_config(cfg).predictions.open(),
                    challenger.tables.predictions.open(),
                ]
            if None in tables:
                return
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
                continue
            result.comparisons.append(compare_date(cfg, *tables, d, champ_col, chall_col))
        except Exception as e:
            log.warning("challenger %s, %s: comparison failed: %s", challenger.name, d, brief_error(e))
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
    return _comparison(
        cfg, date, n_a, n_b, unmatched, frac < 1.0, sa[ia], sb[ib], ga[ia] if ga is not None else None
    )


def _comparison(
    cfg: JobConfig,
    date: str,
    n_a: int,
    n_b: int,
    unmatched: int,
    sampled: bool,
    sa: np.ndarray,
    sb: np.ndarray,
    groups: np.ndarray | None,
) -> Comparison:
    """The measures of aligned score arrays (ordered by key hash) as the report's entry."""
    c = cfg.compare
    ok = np.isfinite(sa) & np.isfinite(sb)
    m = compare(sa[ok], sb[ok], thresholds_of(cfg), c.bins, groups[ok] if groups is not None else None, c.k)
    pick = np.random.default_rng(0).permutation(int(ok.sum()))[: c.plot_points]
    return Comparison(
        **dataclasses.asdict(m),  # every measure, named alike in the report
        date=date,
        champion_rows=n_a,
        challenger_rows=n_b,
        unmatched=unmatched,
        sampled=sampled,
        verdict="disagrees" if m.broke else "agrees",
        plot=np.round(np.c_[sa[ok][pick], sb[ok][pick]], 5).tolist(),
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
