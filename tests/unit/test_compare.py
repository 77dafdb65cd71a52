"""The challenger comparison's numbers (pipeline/quality/compare.py) against scipy and numpy
computed directly, one measure at a time, on scores with ties and groups of every size."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from pipeline.quality.compare import (
    QUANTILES,
    Thresholds,
    average_ranks,
    compare,
    descending,
    psi,
    radix_order,
    spearman,
    top_k_overlap,
)


@pytest.fixture
def scores():
    rng = np.random.default_rng(3)
    a = rng.beta(2, 5, 5000)
    b = np.clip(a + rng.normal(0, 0.05, a.size), 0, 1)
    return np.round(a, 3), np.round(b, 3)  # rounded: many ties


def test_ranks_and_spearman_match_scipy(scores):
    a, b = scores
    np.testing.assert_allclose(average_ranks(a), scipy.stats.rankdata(a, method="average"))
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a[:1], b[:1]) is None and spearman(np.ones(5), a[:5]) is None


def test_psi_matches_a_direct_computation(scores):
    a, b = scores
    edges = np.unique(np.quantile(a, np.linspace(0, 1, 11))[1:-1])
    e = np.array([np.sum(np.digitize(a, edges) == i) for i in range(len(edges) + 1)]) / a.size
    x = np.array([np.sum(np.digitize(b, edges) == i) for i in range(len(edges) + 1)]) / b.size
    e, x = np.maximum(e, 1e-6), np.maximum(x, 1e-6)
    assert psi(a, b, 10) == pytest.approx(float(np.sum((x - e) * np.log(x / e))), abs=1e-12)
    assert psi(a, a, 10) == pytest.approx(0.0, abs=1e-12)


def test_shifts_match_numpy(scores):
    a, b = scores
    m = compare(a, b, Thresholds())
    assert m.rows == a.size
    assert m.mean_shift == pytest.approx(b.mean() - a.mean())
    assert m.mean_shift_std == pytest.approx((b.mean() - a.mean()) / a.std())
    for q in QUANTILES:
        want = (np.percentile(b, q * 100) - np.percentile(a, q * 100)) / a.std()
        assert m.quantile_shift[f"p{round(q * 100)}"] == pytest.approx(want, abs=1e-12)


def _loop_overlap(groups, a, b, k):
    """Per group in plain Python: top-k rows by score, ties by row order."""
    jac, changed = [], []
    for g in sorted(set(groups.tolist())):
        rows = [i for i in range(len(groups)) if groups[i] == g]
        ta = sorted(rows, key=lambda i: (-a[i], i))[:k]
        tb = sorted(rows, key=lambda i: (-b[i], i))[:k]
        jac.append(len(set(ta) & set(tb)) / len(set(ta) | set(tb)))
        changed.append(ta[0] != tb[0])
    return len(jac), float(np.mean(jac)), float(np.mean(changed))


def test_top_k_overlap_matches_a_loop_over_groups(scores):
    a, b = scores
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 300, a.size) * 7919  # ids need not be dense; sizes vary, some < k
    for k in (1, 3, 10):
        got = top_k_overlap(groups, a, b, k)
        want = _loop_overlap(groups, a, b, k)
        assert got[0] == want[0]
        assert got[1] == pytest.approx(want[1], abs=1e-12) and got[2] == pytest.approx(want[2], abs=1e-12)
    assert top_k_overlap(groups, a, a, 5)[1:] == (1.0, 0.0)


def test_the_verdict_names_the_measures_that_broke(scores):
    a, b = scores
    assert compare(a, b, Thresholds()).broke == []
    far = compare(a, 1 - a, Thresholds(), groups=np.arange(a.size) // 20, k=3)
    assert {x.split()[0] for x in far.broke} >= {"spearman", "mean", "quantile", "psi", "top-k", "top-1"}


def test_the_radix_sorts_order_as_numpy_does_stably(scores):
    """compare sorts each side once, by radix: the same order as numpy's stable argsort, ties
    (and -0.0 beside 0.0) in row order, so every measure sees the rows as before."""
    a, _ = scores
    x = np.r_[a, -a, 0.0, -0.0, np.inf, -np.inf, 1e-300, -1e-300]
    np.testing.assert_array_equal(descending(x), np.argsort(-x, kind="stable"))
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**63, 3000, dtype=np.int64).view(np.uint64)
    keys[::3] = keys[1::3]  # repeated keys: kept in the given order
    first = rng.permutation(keys.size)
    np.testing.assert_array_equal(radix_order(keys), np.argsort(keys, kind="stable"))
    np.testing.assert_array_equal(radix_order(keys, first), first[np.argsort(keys[first], kind="stable")])
    # the ranks from a descending order are n + 1 minus the ascending ones: rho does not change
    np.testing.assert_allclose(average_ranks(a, descending(a)), a.size + 1 - scipy.stats.rankdata(a))


def test_one_sort_per_side_gives_what_separate_sorts_give(scores):
    """The measures of compare (one order per side, shared) against each measure on its own."""
    a, b = scores
    groups = np.random.default_rng(5).integers(0, 300, a.size)
    m = compare(a, b, Thresholds(), groups=groups, k=4)
    assert m.spearman == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert m.psi == pytest.approx(psi(a, b, 10), abs=1e-12)
    want = _loop_overlap(groups, a, b, 4)
    assert (m.groups, m.topk_jaccard, m.top1_changed) == pytest.approx(want, abs=1e-12)
    empty = compare(np.empty(0), np.empty(0), Thresholds(), groups=np.empty(0, dtype=np.int64))
    assert empty.rows == 0 and empty.spearman is None and empty.psi is None


def _pair_sample(max_rows: int, rows: int, group_by=("user_id",)):
    from pipeline.config import config_from_dict
    from pipeline.run.comparison import PairSample

    cfg = config_from_dict(
        {
            "name": "t",
            "input": {"uri": "/in"},
            "model": {"uri": "/m"},
            "output": {"uri": "/out", "key_columns": ["event_id", "user_id"]},
            "challengers": [{"name": "c", "model": {"uri": "/m2"}, "output": {"uri": "/out2"}}],
            "compare": {"group_by": list(group_by) or None, "max_rows": max_rows},
        }
    )
    return PairSample(cfg, "score", "score", {"d": rows}, {"d": 1})


def _batch(start: int, n: int, offset: float = 0.0):
    import pyarrow as pa

    i = np.arange(start, start + n)
    return pa.table(
        {
            "event_id": [f"e{x}" for x in i],
            "user_id": pa.array(i % 7, pa.int64()),
            "score": pa.array(i / 1000 + offset, pa.float32()),
        }
    )


def test_pairs_kept_as_scored_come_back_in_input_order():
    """Batches arrive in any order (threads); the pairs come back ordered by their place in the
    input, each batch's rows as they were, the scores and group ids exactly."""
    pairs = _pair_sample(1_000_000, 600)
    for where in [(1, 0, 0), (0, 200, 1), (0, 0, 0), (0, 200, 0)]:
        start = {(0, 0, 0): 0, (0, 200, 0): 100, (0, 200, 1): 200, (1, 0, 0): 300}[where]
        pairs.add("d", where, _batch(start, 100), _batch(start, 100, 1.0))
    a, b, g = pairs.arrays("d")
    want = np.arange(400)
    np.testing.assert_array_equal(a, (want / 1000).astype(np.float32))
    np.testing.assert_array_equal(b, (want / 1000 + 1.0).astype(np.float32))
    np.testing.assert_array_equal(g, want % 7)
    pairs.file_scored("d")  # its only file: the measures start on their thread
    m, plot = pairs.result("d")
    assert m.rows == 400 and m.groups == 7 and len(plot) == 400 and pairs.seconds["d"] >= 0


def test_pairs_of_a_date_over_max_rows_are_a_sample_of_whole_groups():
    pairs = _pair_sample(1000, 10_000)
    for s in range(0, 10_000, 1000):
        pairs.add("d", (0, s, 0), _batch(s, 1000), _batch(s, 1000, 1.0))
    a, b, g = pairs.arrays("d")
    assert pairs.sampled["d"] and 0 < len(a) < 10_000
    kept = set(g.tolist())  # every row of a kept group, none of the others
    assert len(a) == sum(1 for x in range(10_000) if x % 7 in kept)
