"""How far a challenger's scores are from the champion's, on the same rows (joined by key).

Pure numpy on two aligned arrays (row i of each is the same key), so the numbers are checked
against scipy and numpy computed directly (tests/unit/test_compare.py). The measures:

- Spearman rank correlation: Pearson's correlation of the average ranks (ties share a rank);
- mean shift, and the shift of the 5/25/50/75/95th percentiles, challenger minus champion, also
  in the champion's standard deviations (the units of the thresholds);
- PSI of the challenger's scores over equal-mass bins of the champion's;
- with groups (e.g. each user_id's rows): each group's top-k rows by either model, the mean
  Jaccard overlap of the two sets and the share of groups whose top-1 row changed. Ties are broken
  by row order (the caller's: by key hash for tables read back, the input's order for pairs kept as
  they were scored), so equal scores give the same top-k in both.

Each side is sorted once (a radix sort, stable), and that order serves every measure: at 10^6 rows
the comparison costs about 0.3 CPU s, where a sort per measure cost 0.7 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PSI_FLOOR = 1e-6  # an empty bin counts as this share: the PSI stays finite


@dataclass
class Thresholds:
    spearman_min: float = 0.9
    mean_shift_max: float = 0.25
    quantile_shift_max: float = 0.5
    psi_max: float = 0.25
    jaccard_min: float = 0.5
    top1_changed_max: float = 0.5


@dataclass
class Measures:
    rows: int
    spearman: float | None
    mean_champion: float
    mean_challenger: float
    mean_shift: float
    mean_shift_std: float | None
    quantile_shift: dict[str, float]  # "p5" -> challenger minus champion, in the champion's stds
    psi: float | None
    groups: int | None = None
    topk_jaccard: float | None = None
    top1_changed: float | None = None
    broke: list[str] = field(default_factory=list)

    @property
    def max_quantile_shift(self) -> float | None:
        return max((abs(v) for v in self.quantile_shift.values()), default=None)


def radix_order(keys: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Row indices ordering unsigned 64-bit `keys` ascending, stable (equal keys keep their order),
    by least-significant-digit radix sort on 16-bit digits; a digit equal in every row costs no
    pass. With `first`: the rows already in that order, so ties keep it (then the result orders
    by key, then by `first`). numpy sorts 16-bit integers stably by counting, in linear time: at
    10^6 rows each pass is about a sixth of an argsort of 64-bit values."""
    order = np.arange(len(keys)) if first is None else first
    k = keys if first is None else keys[first]
    for shift in range(0, 64, 16):
        digit = (k >> np.uint64(shift)).astype(np.uint16)
        if len(digit) == 0 or digit.min() == digit.max():
            continue
        step = np.argsort(digit, kind="stable")
        order, k = order[step], k[step]
    return order


def descending(x: np.ndarray) -> np.ndarray:
    """Row indices by `x` descending, ties in row order: np.argsort(-x, kind="stable") for finite
    floats, as a radix sort of their bit patterns (ordered like the numbers; -0.0 taken as 0.0)."""
    bits = (np.asarray(x, dtype=np.float64) + 0.0).view(np.uint64)  # + 0.0: -0.0 becomes 0.0
    sign = bits >> np.uint64(63)
    # positive: set the sign bit; negative: flip every bit. Then invert: the largest first.
    ordered = np.where(sign == 1, ~bits, bits | np.uint64(1 << 63))
    return radix_order(~ordered)


def average_ranks(x: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks, ties given their average rank (scipy.stats.rankdata's 'average'). `order`:
    the rows sorted by x (either way: descending gives the ranks counted from the top, n + 1 minus
    the ascending ones, which a rank correlation of two sides ranked alike does not see)."""
    if order is None:
        order = np.argsort(x)  # tied values get one average rank whatever their order
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    first = np.flatnonzero(starts)
    sizes = np.diff(np.r_[first, len(x)])
    avg = first + (sizes + 1) / 2.0  # 0-based start + (1 + size) / 2: the mean 1-based rank
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, sizes)
    return ranks


Orders = tuple[np.ndarray, np.ndarray]  # each side's rows by score, sorted the same way


def spearman(a: np.ndarray, b: np.ndarray, orders: Orders | None = None) -> float | None:
    """Spearman's rho; None with fewer than 2 rows or a constant side (undefined). `orders`: each
    side's rows sorted by score the same way (the top-k's sorts, reused)."""
    if len(a) < 2:
        return None
    oa, ob = orders if orders is not None else (None, None)
    ra, rb = average_ranks(a, oa), average_ranks(b, ob)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else None


def psi(
    expected: np.ndarray, actual: np.ndarray, bins: int = 10, ascending: Orders | None = None
) -> float | None:
    """PSI of `actual` over `bins` equal-mass bins of `expected` (repeated edges merged):
    sum((a - e) * ln(a / e)) over the bins' shares, each share floored at PSI_FLOOR. `ascending`:
    both sides' values already sorted ascending (then the bins are counted by bisection)."""
    if len(expected) == 0 or len(actual) == 0:
        return None
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1))[1:-1])
    if ascending is None:
        e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1)
        a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1)
    else:  # a value v is in bin #(edges <= v): the values below each edge, counted in the sorted side
        e, a = (np.diff(np.r_[0, np.searchsorted(s, edges, side="left"), len(s)]) for s in ascending)
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def group_keys(groups: np.ndarray) -> np.ndarray:
    """Group ids as unsigned 64-bit keys (any one-to-one mapping: only equality counts)."""
    g = np.asarray(groups)
    if g.dtype.kind not in "iu" or g.dtype.itemsize != 8:
        g = g.astype(np.int64)
    return g.view(np.uint64)


def top_k_overlap(
    groups: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, orders: Orders | None = None
) -> tuple[int, float, float]:
    """(groups, mean Jaccard of each group's top-k rows by `a` and by `b`, share of groups whose
    top-1 row differs). `groups`: an integer group id per row; ties broken by row order. Each
    side is its rows by score (descending, ties in row order: `orders` when the caller has them)
    sorted again by group, stably: both list the groups in the same (key) order."""
    n = len(groups)
    if n == 0:
        return 0, float("nan"), float("nan")
    keys = group_keys(groups)
    oa, ob = orders if orders is not None else (descending(a), descending(b))

    def ranked(by_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        order = radix_order(keys, by_score)  # by group, best first; ties in row order
        g = keys[order]
        first = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
        sizes = np.diff(np.r_[first, n])
        rank = np.arange(n) - np.repeat(first, sizes)
        top = rank < k
        # the top-k rows of every group, the group (its position in key order) of each, the sizes,
        # and each group's best row
        return order[top], np.repeat(np.arange(len(first)), sizes)[top], sizes, order[first]

    top_a, group_a, sizes, best_a = ranked(oa)
    top_b, _, _, best_b = ranked(ob)
    in_b = np.zeros(n, dtype=bool)
    in_b[top_b] = True
    inter = np.bincount(group_a[in_b[top_a]], minlength=len(sizes))
    size = np.minimum(sizes, k)  # each side holds min(k, n) rows of a group
    jaccard = inter / (2 * size - inter)
    return len(sizes), float(jaccard.mean()), float((best_a != best_b).mean())


def compare(
    champion: np.ndarray,
    challenger: np.ndarray,
    thresholds: Thresholds,
    bins: int = 10,
    groups: np.ndarray | None = None,
    k: int = 10,
) -> Measures:
    """Every measure of two aligned score arrays, and which thresholds they break. Each side is
    sorted once (descending, ties in row order), and that order serves every measure: the ranks
    of the rank correlation, each group's top-k, the quantiles and the PSI's bins."""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    n = len(a)
    std = float(a.std()) if n else 0.0
    mean_a, mean_b = (float(a.mean()), float(b.mean())) if n else (float("nan"), float("nan"))
    scale = std if std > 0 else float("nan")
    if not n:
        nan = np.full(len(QUANTILES), np.nan)
        m = _measures(n, None, mean_a, mean_b, scale, zip(QUANTILES, nan, nan, strict=True), None)
        m.broke = verdict_breaks(m, thresholds)
        return m
    # the sorts release the GIL: the two sides, then the groups' top-k beside the rest, on two threads
    with ThreadPoolExecutor(2, thread_name_prefix="batchscore-compare") as pool:
        oa, ob = pool.map(descending, (a, b))
        overlap = pool.submit(top_k_overlap, groups, a, b, k, (oa, ob)) if groups is not None else None
        asc = (a[oa[::-1]], b[ob[::-1]])  # sorted ascending; ties' order does not matter here
        qa, qb = (np.quantile(x, QUANTILES) for x in asc)
        rho = spearman(a, b, (oa, ob))
        shifts = zip(QUANTILES, qa, qb, strict=True)
        m = _measures(n, rho, mean_a, mean_b, scale, shifts, psi(*asc, bins, asc))
        if overlap is not None:
            m.groups, m.topk_jaccard, m.top1_changed = overlap.result()
    m.broke = verdict_breaks(m, thresholds)
    return m


def _measures(
    n: int, rho: float | None, mean_a: float, mean_b: float, scale: float, shifts: Any, psi: float | None
) -> Measures:
    return Measures(
        rows=n,
        spearman=rho,
        mean_champion=mean_a,
        mean_challenger=mean_b,
        mean_shift=mean_b - mean_a,
        mean_shift_std=_finite((mean_b - mean_a) / scale),
        quantile_shift={f"p{round(q * 100)}": _finite((y - x) / scale) or 0.0 for q, x, y in shifts},
        psi=psi,
    )


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def verdict_breaks(m: Measures, t: Thresholds) -> list[str]:
    """The measures past their thresholds (empty: the challenger agrees)."""
    broke = []
    if m.spearman is not None and m.spearman < t.spearman_min:
        broke.append(f"spearman {m.spearman:.3f} < {t.spearman_min}")
    if m.mean_shift_std is not None and abs(m.mean_shift_std) > t.mean_shift_max:
        broke.append(f"mean shift {m.mean_shift_std:+.3f} std > {t.mean_shift_max}")
    q = m.max_quantile_shift
    if q is not None and q > t.quantile_shift_max:
        broke.append(f"quantile shift {q:.3f} std > {t.quantile_shift_max}")
    if m.psi is not None and m.psi > t.psi_max:
        broke.append(f"psi {m.psi:.3f} > {t.psi_max}")
    if m.topk_jaccard is not None and m.topk_jaccard < t.jaccard_min:
        broke.append(f"top-k jaccard {m.topk_jaccard:.3f} < {t.jaccard_min}")
    if m.top1_changed is not None and m.top1_changed > t.top1_changed_max:
        broke.append(f"top-1 changed {m.top1_changed:.3f} > {t.top1_changed_max}")
    return broke
