"""How far a challenger's scores are from the champion's, on the same rows (joined by key).

Pure numpy on two aligned arrays (row i of each is the same key), so the numbers are checked
against scipy and numpy computed directly (tests/unit/test_compare.py). The measures:

- Spearman rank correlation: Pearson's correlation of the average ranks (ties share a rank);
- mean shift, and the shift of the 5/25/50/75/95th percentiles, challenger minus champion, also
  in the champion's standard deviations (the units of the thresholds);
- PSI of the challenger's scores over equal-mass bins of the champion's;
- with groups (e.g. each user_id's rows): each group's top-k rows by either model, the mean
  Jaccard overlap of the two sets and the share of groups whose top-1 row changed. Ties are broken
  by row order (the caller orders the rows by key hash), so equal scores give the same top-k in both.
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


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (scipy.stats.rankdata's 'average')."""
    order = np.argsort(x)  # tied values get one average rank whatever their order
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    first = np.flatnonzero(starts)
    sizes = np.diff(np.r_[first, len(x)])
    avg = first + (sizes + 1) / 2.0  # 0-based start + (1 + size) / 2: the mean 1-based rank
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, sizes)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho; None with fewer than 2 rows or a constant side (undefined)."""
    if len(a) < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else None


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float | None:
    """PSI of `actual` over `bins` equal-mass bins of `expected` (repeated edges merged):
    sum((a - e) * ln(a / e)) over the bins' shares, each share floored at PSI_FLOOR."""
    if len(expected) == 0 or len(actual) == 0:
        return None
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1))[1:-1])
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1)
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def top_k_overlap(groups: np.ndarray, a: np.ndarray, b: np.ndarray, k: int) -> tuple[int, float, float]:
    """(groups, mean Jaccard of each group's top-k rows by `a` and by `b`, share of groups whose
    top-1 row differs). `groups`: an integer group id per row; ties broken by row order. Each
    side is one sort by (group, score): both list the groups in the same (ascending id) order."""
    n = len(groups)
    if n == 0:
        return 0, float("nan"), float("nan")

    def ranked(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        order = np.lexsort((-score, groups))  # by group, best first; stable: ties in row order
        g = groups[order]
        first = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
        sizes = np.diff(np.r_[first, n])
        rank = np.arange(n) - np.repeat(first, sizes)
        top = rank < k
        # the top-k rows of every group, the group (its position in id order) of each, the sizes,
        # and each group's best row
        return order[top], np.repeat(np.arange(len(first)), sizes)[top], sizes, order[first]

    top_a, group_a, sizes, best_a = ranked(a)
    top_b, _, _, best_b = ranked(b)
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
    """Every measure of two aligned score arrays, and which thresholds they break."""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    n = len(a)
    std = float(a.std()) if n else 0.0
    mean_a, mean_b = (float(a.mean()), float(b.mean())) if n else (float("nan"), float("nan"))
    qa = np.quantile(a, QUANTILES) if n else np.full(len(QUANTILES), np.nan)
    qb = np.quantile(b, QUANTILES) if n else np.full(len(QUANTILES), np.nan)
    scale = std if std > 0 else float("nan")
    shifts = zip(QUANTILES, qa, qb, strict=True)
    # the rank correlation and the groups' rankings are sorts of every row, which numpy does
    # without the GIL: side by side on two threads
    with ThreadPoolExecutor(2, thread_name_prefix="batchscore-compare") as pool:
        rho = pool.submit(spearman, a, b)
        overlap = pool.submit(top_k_overlap, groups, a, b, k) if groups is not None and n else None
        m = _measures(n, a, b, rho.result(), mean_a, mean_b, scale, shifts, bins)
        if overlap is not None:
            m.groups, m.topk_jaccard, m.top1_changed = overlap.result()
    m.broke = verdict_breaks(m, thresholds)
    return m


def _measures(
    n: int,
    a: np.ndarray,
    b: np.ndarray,
    rho: float | None,
    mean_a: float,
    mean_b: float,
    scale: float,
    shifts: Any,
    bins: int,
) -> Measures:
    return Measures(
        rows=n,
        spearman=rho,
        mean_champion=mean_a,
        mean_challenger=mean_b,
        mean_shift=mean_b - mean_a,
        mean_shift_std=_finite((mean_b - mean_a) / scale),
        quantile_shift={f"p{round(q * 100)}": _finite((y - x) / scale) or 0.0 for q, x, y in shifts},
        psi=psi(a, b, bins),
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
