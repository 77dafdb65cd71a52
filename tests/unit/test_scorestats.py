"""Score profiles and drift measures against numpy on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from models.scoreprofile import (
    REPORT_PROBS,
    SKETCH_POINTS,
    compare,
    exact_quantiles,
    merge,
    merge_profiles,
    partial_of,
    profile_array,
    psi,
    quantile_shift,
)

RNG = np.random.default_rng(42)


def test_merged_files_match_numpy_on_the_union():
    parts = [RNG.beta(2, 20, 200_000), RNG.beta(2, 20, 70_000), RNG.beta(3, 9, 40_000)]
    prof = merge([partial_of(p) for p in parts])
    union = np.concatenate(parts)
    assert prof["count"] == union.size and prof["nan"] == 0
    assert prof["mean"] == pytest.approx(union.mean(), rel=1e-9)
    assert prof["std"] == pytest.approx(union.std(), rel=1e-6)
    assert prof["min"] == union.min() and prof["max"] == union.max()
    for p in REPORT_PROBS:
        got = prof["quantiles"][f"p{round(p * 100):02d}"]
        # within 1/256 in rank of the exact quantile
        rank = (union < got).mean()
        assert abs(rank - p) <= 1 / 256 + 1e-3, (p, got, rank)
    assert len(prof["sketch"]) == SKETCH_POINTS
    assert sum(prof["histogram"]["counts"]) == pytest.approx(union.size, abs=3)  # bins rounded to 0.1


def test_nan_is_counted_not_profiled_and_empty_is_count_zero():
    prof = profile_array(np.array([np.nan, 1.0, 2.0, np.inf]))
    assert prof["count"] == 2 and prof["nan"] == 2 and prof["mean"] == 1.5
    assert merge([partial_of(np.array([]))]) == {"count": 0, "nan": 0}
    assert merge_profiles([profile_array(np.array([np.nan]))])["count"] == 0


def test_merge_profiles_equals_merge_of_partials():
    a, b = RNG.normal(0, 1, 50_000), RNG.normal(1, 2, 20_000)
    both = merge_profiles([profile_array(a), profile_array(b)])
    u = np.concatenate([a, b])
    assert both["count"] == u.size
    assert both["mean"] == pytest.approx(u.mean(), rel=1e-9)
    assert both["std"] == pytest.approx(u.std(), rel=1e-6)
    assert both["quantiles"]["p50"] == pytest.approx(np.median(u), abs=0.03)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    ref = profile_array(RNG.beta(2, 20, 100_000))
    same = profile_array(RNG.beta(2, 20, 100_000))
    shifted = profile_array(RNG.beta(2, 12, 100_000))
    assert psi(same, ref) < 0.01
    assert psi(shifted, ref) > 0.25
    qs = quantile_shift(shifted, ref)
    assert qs["max_in_std"] > 1.0 and qs["shifts"]["p50"] > 0


def test_psi_matches_a_direct_computation_on_decile_bins():
    ref_v, cur_v = RNG.normal(0, 1, 200_000), RNG.normal(0.3, 1.2, 200_000)
    edges = np.quantile(ref_v, np.linspace(0, 1, 11)[1:-1])
    e = np.bincount(np.searchsorted(edges, ref_v), minlength=10) / ref_v.size
    a = np.bincount(np.searchsorted(edges, cur_v), minlength=10) / cur_v.size
    exact = float(np.sum((a - e) * np.log(a / e)))
    assert psi(profile_array(cur_v), profile_array(ref_v)) == pytest.approx(exact, rel=0.05)


def test_constant_scores_do_not_break_the_measures():
    c = profile_array(np.full(1000, 0.5))
    assert psi(c, c) == pytest.approx(0.0, abs=1e-9)
    res = compare(c, c, psi_max=0.25, shift_max=0.5, bins=10)
    assert res["breach"] is False and res["quantile_shift"]["max_in_std"] is None
    other = profile_array(np.full(1000, 0.9))
    assert compare(other, c, psi_max=0.25, shift_max=0.5, bins=10)["breach"] is True


def test_compare_names_the_threshold_that_was_breached():
    ref = profile_array(RNG.normal(0, 1, 50_000))
    cur = profile_array(RNG.normal(0.8, 1, 50_000))
    res = compare(cur, ref, psi_max=10.0, shift_max=0.5, bins=10)
    assert res["breach"] and len(res["reasons"]) == 1
    assert "drift.quantile_shift_max 0.5" in res["reasons"][0]
    res = compare(cur, ref, psi_max=0.1, shift_max=5.0, bins=10)
    assert res["breach"] and "drift.psi_max 0.1" in res["reasons"][0]
    assert not compare(ref, ref, psi_max=0.1, shift_max=0.5, bins=10)["breach"]


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).random(200_000),  # bucketed: most values never sorted
        np.random.default_rng(2).normal(size=50_000).astype(np.float32),
        np.repeat(np.random.default_rng(3).random(7), 20_000),  # ties across ranks
        np.concatenate([np.random.default_rng(4).random(50_000), [1e30]]),  # one outlier: one crowded bucket
        np.concatenate([np.random.default_rng(5).random(10_000), [-1.7e308, 1.7e308]]),  # span overflows
        np.random.default_rng(6).integers(0, 3, 60_000).astype(np.float64),
        np.random.default_rng(7).random(100),  # small: sorted whole
        np.array([2.5]),
    ],
)
def test_the_sketch_quantiles_are_numpys_exactly(values):
    x = values.astype(np.float64)
    probs = np.linspace(0.0, 1.0, SKETCH_POINTS)
    got = exact_quantiles(x, probs, float(x.min()), float(x.max()))
    assert np.array_equal(got, np.quantile(x, probs))
