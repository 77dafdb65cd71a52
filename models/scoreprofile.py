"""Score distributions: mergeable profiles, and drift between two of them.

A *profile* summarizes the scores of one partition (or of a checkpoint's held-out set):

    {"count", "nan", "mean", "std", "min", "max",
     "quantiles": {"p01": .., "p05": .., ..., "p99": ..},
     "sketch": [q(0), q(1/256), ..., q(1)],      # the quantile function at 257 evenly spaced ranks
     "histogram": {"edges": [...], "counts": [...]}}

Files are profiled in parallel (one Ray task per file, reading only the score column); their
sketches merge into the partition's by adding their CDFs weighted by row count, so the driver
handles a few hundred numbers per file, never the scores. Quantiles from a merged sketch are
within 1/256 in rank of the exact ones.

Drift compares a profile with a reference profile:
  - PSI (population stability index) over bins cut at the reference's quantiles
    (equal-mass bins, `bins` of them), with a 1e-4 floor on bin fractions;
  - quantile shift: the largest |q_today(p) - q_ref(p)| over p in QUANTILE_SHIFT_PROBS,
    in units of the reference's standard deviation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SKETCH_POINTS = 257


REPORT_PROBS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


QUANTILE_SHIFT_PROBS = (0.05, 0.25, 0.5, 0.75, 0.95)


HISTOGRAM_BINS = 40


_PSI_FLOOR = 1e-4


@dataclass
class Partial:
    """The mergeable summary of one file's scores."""

    count: int
    nan: int
    total: float
    total_sq: float
    min: float
    max: float
    sketch: list[float]


def partial_of(values: np.ndarray) -> Partial:
    v = np.asarray(values)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    ok = np.isfinite(v)
    finite = v if ok.all() else v[ok]
    nan = int(v.size - finite.size)
    if finite.size == 0:
        return Partial(0, nan, 0.0, 0.0, math.inf, -math.inf, [])
    wide = finite.astype(np.float64, copy=False)
    lo, hi = float(wide.min()), float(wide.max())
    return Partial(
        count=int(finite.size),
        nan=nan,
        total=float(wide.sum()),
        total_sq=float(np.square(wide).sum()),
        min=lo,
        max=hi,
        sketch=[float(x) for x in exact_quantiles(wide, np.linspace(0.0, 1.0, SKETCH_POINTS), lo, hi)],
    )


def exact_quantiles(x: np.ndarray, probs: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`np.quantile(x, probs)` (the same floats) of float64 values between `lo` and `hi` (their min
    and max), without sorting them all: every file a run writes is profiled, so this is per-row
    work, and a sort was the largest cost of the profile. The values are counted into equal-width
    buckets (bucket order is value order: each step of the bucket number is monotone); only the
    buckets holding a wanted rank are gathered and sorted: a few values per rank, unless the
    values crowd into a few buckets (then it costs about what one sort of them would)."""
    n = len(x)
    below, above = _ranks(probs, n)
    if n <= _SORT_BELOW or not hi > lo or not math.isfinite(hi - lo):  # (a span past float64's range)
        ordered = np.sort(x)
        return _lerp(ordered[below], ordered[above], probs, n)
    buckets = min(1 << 16, n // 8)
    scaled = x - lo
    scaled *= buckets / (hi - lo)
    which = scaled.astype(np.int32)  # 0 .. buckets (the max lands on `buckets` itself)
    np.minimum(which, buckets - 1, out=which)
    counts = np.bincount(which, minlength=buckets)
    ends = np.cumsum(counts)  # the values in a bucket and in all buckets before it
    ranks = np.unique(np.concatenate([below, above]))
    home = np.searchsorted(ends, ranks, side="right")  # the bucket of each wanted rank
    wanted = np.unique(home)
    flag = np.zeros(buckets, dtype=bool)
    flag[wanted] = True
    picked = np.sort(x[flag[which]])  # the wanted buckets' values, in value order
    starts = np.cumsum(counts[wanted]) - counts[wanted]  # each wanted bucket's start in `picked`
    at = starts[np.searchsorted(wanted, home)] + ranks - (ends[home] - counts[home])
    order = picked[at]  # the value of each rank in `ranks` (sorted, distinct)
    return _lerp(order[np.searchsorted(ranks, below)], order[np.searchsorted(ranks, above)], probs, n)


_SORT_BELOW = 4096  # fewer values than this are sorted whole


def _ranks(probs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The two order statistics (0-based ranks) each quantile lies between (numpy's 'linear')."""
    below = np.floor(probs * (n - 1)).astype(np.int64)
    return below, np.minimum(below + 1, n - 1)


def _lerp(a: np.ndarray, b: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    """numpy's interpolation between the order statistics a and b, for the same rounding."""
    pos = probs * (n - 1)
    t, d = pos - np.floor(pos), b - a
    out = a + d * t
    np.subtract(b, d * (1 - t), out=out, where=t >= 0.5)
    return out


def _cdf(sketch: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The CDF of a quantile sketch at x (linear between sketch points, 0 below, 1 above)."""
    ranks = np.linspace(0.0, 1.0, len(sketch))
    # np.interp needs increasing xp; ties (many equal scores) keep the highest rank at that value
    xs, idx = np.unique(sketch[::-1], return_index=True)
    rs = ranks[::-1][idx]
    out = np.interp(x, xs, rs, left=0.0, right=1.0)
    return out


def merge(partials: list[Partial]) -> dict[str, Any]:
    """The profile of the union of the partials' scores."""
    parts = [p for p in partials if p.count]
    n = sum(p.count for p in parts)
    nan = sum(p.nan for p in partials)
    if n == 0:
        return {"count": 0, "nan": nan}
    total = sum(p.total for p in parts)
    mean = total / n
    var = max(sum(p.total_sq for p in parts) / n - mean * mean, 0.0)
    if len(parts) == 1:
        sketch = np.asarray(parts[0].sketch)
    else:
        grid = np.unique(np.concatenate([np.asarray(p.sketch) for p in parts]))
        cdf = sum(p.count * _cdf(np.asarray(p.sketch), grid) for p in parts) / n
        cdf = np.maximum.accumulate(cdf)
        sketch = _quantile_from_cdf(grid, cdf, np.linspace(0.0, 1.0, SKETCH_POINTS))
        sketch[0], sketch[-1] = min(p.min for p in parts), max(p.max for p in parts)
    return finish_profile(n, nan, mean, math.sqrt(var), sketch)


def partial_of_profile(profile: dict[str, Any]) -> Partial:
    n = profile.get("count", 0)
    if not n:
        return Partial(0, profile.get("nan", 0), 0.0, 0.0, math.inf, -math.inf, [])
    mean, std = profile["mean"], profile["std"]
    return Partial(
        n,
        profile["nan"],
        mean * n,
        (std * std + mean * mean) * n,
        profile["min"],
        profile["max"],
        profile["sketch"],
    )


def merge_profiles(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """The profile of the union of several profiles' scores (e.g. all dates of a run)."""
    return merge([partial_of_profile(p) for p in profiles])


def _quantile_from_cdf(grid: np.ndarray, cdf: np.ndarray, probs: np.ndarray) -> np.ndarray:
    # invert a non-decreasing CDF: for each p, the grid value where the CDF reaches p
    keep = np.concatenate([[True], np.diff(cdf) > 0])
    return np.interp(probs, cdf[keep], grid[keep])


def finish_profile(n: int, nan: int, mean: float, std: float, sketch: np.ndarray) -> dict[str, Any]:
    sketch = np.asarray(sketch, dtype=np.float64)
    lo, hi = float(sketch[0]), float(sketch[-1])
    return {
        "count": int(n),
        "nan": int(nan),
        "mean": mean,
        "std": std,
        "min": lo,
        "max": hi,
        "quantiles": {_pname(p): quantile(sketch, p) for p in REPORT_PROBS},
        "sketch": [float(x) for x in sketch],
        "histogram": histogram({"count": n, "sketch": sketch}, lo, hi, HISTOGRAM_BINS),
    }


def profile_array(values: np.ndarray) -> dict[str, Any]:
    """The profile of an in-memory array (e.g. a checkpoint's held-out scores)."""
    return merge([partial_of(values)])


def _pname(p: float) -> str:
    return f"p{round(p * 100):02d}"


def quantile(sketch, p: float) -> float:
    s = np.asarray(sketch, dtype=np.float64)
    return float(np.interp(p, np.linspace(0.0, 1.0, len(s)), s))


def histogram(profile: dict[str, Any], lo: float, hi: float, bins: int) -> dict[str, list]:
    """Approximate counts in `bins` equal-width bins over [lo, hi], from the sketch."""
    if not profile.get("count"):
        return {"edges": [], "counts": []}
    if hi <= lo:
        hi = lo + 1e-9
    edges = np.linspace(lo, hi, bins + 1)
    cdf = _cdf(np.asarray(profile["sketch"], dtype=np.float64), edges)
    cdf[0], cdf[-1] = 0.0, 1.0
    counts = np.diff(cdf) * profile["count"]
    return {"edges": [float(e) for e in edges], "counts": [round(float(c), 1) for c in counts]}


def psi(current: dict[str, Any], reference: dict[str, Any], bins: int = 10) -> float:
    """Population stability index of `current` against `reference` (equal-mass reference bins)."""
    ref = np.asarray(reference["sketch"], dtype=np.float64)
    cur = np.asarray(current["sketch"], dtype=np.float64)
    inner = np.unique([quantile(ref, i / bins) for i in range(1, bins)])
    if inner.size == 0:  # a constant reference: one bin at its value vs the rest
        inner = np.asarray([ref[0]])
    e = np.diff(np.concatenate([[0.0], _cdf(ref, inner), [1.0]]))
    a = np.diff(np.concatenate([[0.0], _cdf(cur, inner), [1.0]]))
    e, a = np.maximum(e, _PSI_FLOOR), np.maximum(a, _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_shift(current: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Per-quantile shifts, and the largest in units of the reference's standard deviation."""
    shifts = {
        _pname(p): quantile(current["sketch"], p) - quantile(reference["sketch"], p)
        for p in QUANTILE_SHIFT_PROBS
    }
    scale = reference.get("std") or 0.0
    worst = max(abs(v) for v in shifts.values())
    return {"shifts": shifts, "max_abs": worst, "max_in_std": worst / scale if scale > 0 else None}


def compare(
    current: dict[str, Any], reference: dict[str, Any], *, psi_max: float, shift_max: float, bins: int
) -> dict[str, Any]:
    """Drift of `current` against `reference` and whether it breaches the thresholds."""
    if not current.get("count") or not reference.get("count"):
        return {"psi": None, "quantile_shift": None, "breach": False, "reasons": ["no scores to compare"]}
    value = psi(current, reference, bins)
    qs = quantile_shift(current, reference)
    reasons = []
    if value > psi_max:
        reasons.append(f"PSI {value:.3f} > drift.psi_max {psi_max:g}")
    shift = qs["max_in_std"]
    if shift is not None and shift > shift_max:
        reasons.append(f"quantile shift {shift:.2f} std > drift.quantile_shift_max {shift_max:g}")
    return {
        "psi": round(value, 6),
        "quantile_shift": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in qs.items()},
        "breach": bool(reasons),
        "reasons": reasons,
    }
