"""A top-K challenger against a top-K champion (output.top_k): their committed lists, group by
group, and their scores of every row before the ranking.

A top-K table holds, per group and date, the k best items and their heads as lists. The lists are
compared as a consumer sees them, on the first `kk = min(compare.k, the champion's k, the
challenger's k)` items of each (a longer list would otherwise differ by its length alone):

- `topk_jaccard`: per group, |champion's items ∩ challenger's| / |union|, averaged over the groups
  both tables hold; `top1_changed`: the share of those groups whose first item differs.

The score measures (`spearman`, `mean_shift`, `quantile_shift`, `psi`) are those of a scores table,
on every row's two scores before the ranking: the replicas keep them while scoring, a deterministic
sample by key hash of at most compare.max_rows rows a date (pipeline.stages.modelset.write_pairs),
read here once both tables are committed (`scores_of: rows`). A date the two models did not score
together in this run has only its lists: the measures are then taken on them (`scores_of: lists`):
`spearman` over the (group, item) pairs both lists hold, the shifts and `psi` between the two
sides' listed scores over the groups both tables hold.

Groups are joined on a 64-bit hash of their key (`unmatched`: groups in one table only), items on a
hash of the item keys. A date with more than compare.max_rows groups has its lists compared on a
deterministic sample of groups (by group hash).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.features import row_hash64
from pipeline.quality.compare import QUANTILES, Measures, Thresholds, compare, psi, spearman, verdict_breaks
from pipeline.reporting.schema import Comparison

_MIX = np.uint64(0x9E3779B97F4A7C15)
_ALL = 2**64 - 1  # a cut that keeps every row


def _lists(table: pa.Table, group_by: list[str], items: list[str], head: str, frac: float):
    """(group hash, list lengths, flat item hashes, flat scores) of a top-K table's rows; with
    frac < 1 only the groups whose hash is in the first `frac` of the range."""
    g = row_hash64([table.column(c) for c in group_by], seed=11)
    if frac < 1.0:
        keep = g < np.uint64(min(int(frac * 2**64), 2**64 - 1))
        table, g = table.filter(pa.array(keep)), g[keep]
    scores = table.column(head).combine_chunks()
    lengths = pc.list_value_length(scores).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = [table.column(c).combine_chunks().flatten() for c in items]
    h = row_hash64(flat, seed=13) if flat and len(flat[0]) else np.empty(0, dtype=np.uint64)
    s = scores.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return g, lengths, h, s


def _first(lengths: np.ndarray, rows: np.ndarray, kk: int):
    """For the groups `rows` (in that order): each list's first kk entries, as flat indices, the
    position of their group, and whether the entry is its list's first."""
    starts = np.cumsum(lengths) - lengths
    n = np.minimum(lengths[rows], kk)
    pos = np.repeat(np.arange(len(rows)), n)
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    return np.repeat(starts[rows], n) + within, pos, within == 0, n


def top_k_measures(
    a: tuple, b: tuple, ia: np.ndarray, ib: np.ndarray, kk: int, bins: int
) -> tuple[Measures, np.ndarray, np.ndarray]:
    """The measures of two tables' lists (from `_lists`) over the groups `ia`/`ib` (the same
    groups, in the same order); returns also the paired scores (champion, challenger)."""
    (_, la, ha, sa), (_, lb, hb, sb) = a, b
    fa, pa_, firsta, na = _first(la, ia, kk)
    fb, pb, firstb, nb = _first(lb, ib, kk)
    ida = ha[fa] + pa_.astype(np.uint64) * _MIX  # (group, item): unique within one table's lists
    idb = hb[fb] + pb.astype(np.uint64) * _MIX
    _, ca, cb = np.intersect1d(ida, idb, assume_unique=True, return_indices=True)
    groups = len(ia)
    inter = np.bincount(pa_[ca], minlength=groups)
    union = na + nb - inter
    jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    top1 = ha[fa[firsta]] != hb[fb[firstb]] if groups else np.zeros(0, dtype=bool)
    xa, xb = sa[fa], sb[fb]  # the listed items' scores, each side's own lists
    pairs_a, pairs_b = xa[ca], xb[cb]
    ok = np.isfinite(xa)
    xa, xb = xa[ok], xb[np.isfinite(xb)]
    mean_a = float(xa.mean()) if len(xa) else float("nan")
    mean_b = float(xb.mean()) if len(xb) else float("nan")
    std = float(xa.std()) if len(xa) else 0.0
    scale = std if std > 0 else float("nan")
    shifts = {}
    if len(xa) and len(xb):
        qa, qb = np.quantile(xa, QUANTILES), np.quantile(xb, QUANTILES)
        for q, x, y in zip(QUANTILES, qa, qb, strict=True):
            v = (y - x) / scale
            shifts[f"p{round(q * 100)}"] = float(v) if np.isfinite(v) else 0.0
    shift_std = (mean_b - mean_a) / scale
    m = Measures(
        rows=len(pairs_a),
        spearman=spearman(pairs_a, pairs_b),
        mean_champion=mean_a,
        mean_challenger=mean_b,
        mean_shift=mean_b - mean_a,
        mean_shift_std=float(shift_std) if np.isfinite(shift_std) else None,
        quantile_shift=shifts,
        psi=psi(xa, xb, bins),
        groups=groups,
        topk_jaccard=float(jaccard.mean()) if groups else None,
        top1_changed=float(top1.mean()) if groups else None,
    )
    return m, pairs_a, pairs_b


def compare_top_k_date(
    cfg: Any,
    job: Any,
    thresholds: Thresholds,
    champion: Any,
    challenger: Any,
    date: str,
    champ_col: str,
    chall_col: str,
    pairs: Any = None,
) -> Comparison:
    """One date's comparison of two committed top-K tables (deltalake.DeltaTable); `job`: the
    challenger's job (its k). `pairs`: the challenger's pipeline.stages.modelset.PairSpec, where
    the per-row score pairs were kept while scoring; when it holds the date, the score measures
    are taken from them, else from the lists."""
    top, c, col = cfg.output.top_k, cfg.compare, cfg.input.partition_column
    group_by, items = list(top.group_by), cfg.output.item_columns
    where = pc.field(col) == date
    read = [(dt.to_pyarrow_dataset(), head) for dt, head in ((champion, champ_col), (challenger, chall_col))]
    counts = [ds.count_rows(filter=where) for ds, _ in read]
    frac = min(1.0, c.max_rows / max(*counts, 1))
    a, b = (
        _lists(ds.to_table(columns=[*group_by, *items, head], filter=where), group_by, items, head, frac)
        for ds, head in read
    )
    common, ia, ib = np.intersect1d(a[0], b[0], return_indices=True)
    kk = min(c.k, top.k, job.output.top_k.k)
    m, pa_, pb = top_k_measures(a, b, ia, ib, kk, c.bins)
    scored = _read_pairs(pairs.where, col, date) if pairs is not None else None
    if scored is not None:  # every row's scores before the ranking (a sample above max_rows)
        whole = compare(*scored, thresholds, c.bins)
        m.rows, m.spearman, m.psi = whole.rows, whole.spearman, whole.psi
        m.mean_champion, m.mean_challenger, m.mean_shift = (
            whole.mean_champion,
            whole.mean_challenger,
            whole.mean_shift,
        )
        m.mean_shift_std, m.quantile_shift = whole.mean_shift_std, whole.quantile_shift
        pa_, pb = scored
    sampled = frac < 1.0 or (scored is not None and pairs.cuts.get(date, _ALL) < _ALL)
    m.broke = verdict_breaks(m, thresholds)
    pick = np.random.default_rng(0).permutation(len(pa_))[: c.plot_points]
    ok = np.isfinite(pa_[pick]) & np.isfinite(pb[pick])
    return Comparison(
        **dataclasses.asdict(m),
        date=date,
        champion_rows=counts[0],
        challenger_rows=counts[1],
        unmatched=len(a[0]) + len(b[0]) - 2 * len(common),
        sampled=sampled,
        verdict="disagrees" if m.broke else "agrees",
        plot=np.round(np.c_[pa_[pick][ok], pb[pick][ok]], 5).tolist(),
        scores_of="rows" if scored is not None else "lists",
    )


def _read_pairs(where: Any, col: str, date: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The date's (champion, challenger) score pairs kept while scoring, each row once (a retried
    batch rewrote its own file; rows are told apart by key hash), ordered by key hash, finite
    only; None when none were kept for it."""
    import pyarrow.parquet as pq

    from pipeline.storage import list_files

    files = list_files(where.join(f"{col}={date}"), ".parquet")
    if not files:
        return None
    parts = []
    for info in files:
        with where.fs.open_input_file(info.path) as f:
            parts.append(pq.read_table(f))
    t = pa.concat_tables(parts)
    h, first = np.unique(t.column("h").to_numpy(), return_index=True)  # sorted by key hash
    a = t.column("a").to_numpy(zero_copy_only=False).astype(np.float64)[first]
    b = t.column("b").to_numpy(zero_copy_only=False).astype(np.float64)[first]
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]
