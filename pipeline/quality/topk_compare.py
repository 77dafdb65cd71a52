"""A top-K challenger against a top-K champion (output.top_k): their committed lists, group by group.

A top-K table holds, per group and date, the k best items and their heads as lists; the per-row
scores before ranking are not kept. So the two tables are compared as a consumer sees them, on the
first `kk = min(compare.k, the champion's k, the challenger's k)` items of each list (a longer list
would otherwise shift every measure by its length alone):

- `topk_jaccard`: per group, |champion's items ∩ challenger's| / |union|, averaged over the groups
  both tables hold; `top1_changed`: the share of those groups whose first item differs;
- `spearman`: rank correlation of the two models' scores on the (group, item) pairs both lists hold
  (pooled over groups: whether the items both show get consistent scores);
- `mean_shift`, `quantile_shift`, `psi`: between the distributions of the listed items' scores (what
  the shown items score), each side on its own lists of the groups both tables hold.

Groups are joined on a 64-bit hash of their key (`unmatched`: groups in one table only), items on a
hash of the item keys. A date with more than compare.max_rows groups is compared on a deterministic
sample of groups (by group hash).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.features import row_hash64
from pipeline.quality.compare import QUANTILES, Measures, Thresholds, psi, spearman, verdict_breaks
from pipeline.reporting.schema import Comparison

_MIX = np.uint64(0x9E3779B97F4A7C15)


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
) -> Comparison:
    """One date's comparison of two committed top-K tables (deltalake.DeltaTable); `job`: the
    challenger's job (its k)."""
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
    m.broke = verdict_breaks(m, thresholds)
    pick = np.random.default_rng(0).permutation(len(pa_))[: c.plot_points]
    ok = np.isfinite(pa_[pick]) & np.isfinite(pb[pick])
    return Comparison(
        **dataclasses.asdict(m),
        date=date,
        champion_rows=counts[0],
        challenger_rows=counts[1],
        unmatched=len(a[0]) + len(b[0]) - 2 * len(common),
        sampled=frac < 1.0,
        verdict="disagrees" if m.broke else "agrees",
        plot=np.round(np.c_[pa_[pick][ok], pb[pick][ok]], 5).tolist(),
    )
