"""The comparison of two top-K tables' lists (pipeline/quality/topk_compare.py) against the same
measures computed directly with Python sets, numpy and scipy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats

from pipeline.quality.topk_compare import _lists, top_k_measures


def _table(rows: dict[int, list[tuple[int, float]]]) -> pa.Table:
    users = sorted(rows)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array([[i for i, _ in rows[u]] for u in users], pa.list_(pa.int64())),
            "score": pa.array([[s for _, s in rows[u]] for u in users], pa.list_(pa.float32())),
        }
    )


def test_lists_overlap_and_scores_match_a_direct_computation():
    rng = np.random.default_rng(4)
    a, b = {}, {}
    for u in range(40):
        pool = rng.choice(30, size=12, replace=False)
        sa, sb = np.sort(rng.random(6))[::-1], np.sort(rng.random(4))[::-1]
        if u % 7:  # a group in one table only
            a[u] = list(zip(pool[:6].tolist(), sa.astype(np.float32).tolist(), strict=True))
        b[u] = list(zip(rng.permutation(pool[:8])[:4].tolist(), sb.astype(np.float32).tolist(), strict=True))
    ta, tb = _table(a), _table(b)
    la = _lists(ta, ["user_id"], ["item_id"], "score", 1.0)
    lb = _lists(tb, ["user_id"], ["item_id"], "score", 1.0)
    common, ia, ib = np.intersect1d(la[0], lb[0], return_indices=True)
    kk = 3
    m, pa_, pb = top_k_measures(la, lb, ia, ib, kk, bins=5)

    users = sorted(set(a) & set(b))
    assert m.groups == len(common) == len(users)
    sets = [({i for i, _ in a[u][:kk]}, {i for i, _ in b[u][:kk]}) for u in users]
    assert m.topk_jaccard == pytest.approx(np.mean([len(x & y) / len(x | y) for x, y in sets]), abs=1e-12)
    assert m.top1_changed == pytest.approx(np.mean([a[u][0][0] != b[u][0][0] for u in users]), abs=1e-12)
    pairs = [
        (dict(a[u][:kk])[i], dict(b[u][:kk])[i]) for u, (x, y) in zip(users, sets, strict=True) for i in x & y
    ]
    assert m.rows == len(pairs) == len(pa_)
    x, y = np.array(pairs).T
    assert m.spearman == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-9)
    sa = np.array([s for u in users for _, s in a[u][:kk]], dtype=np.float64)
    sb = np.array([s for u in users for _, s in b[u][:kk]], dtype=np.float64)
    assert m.mean_shift == pytest.approx(sb.mean() - sa.mean(), abs=1e-6)
    q = (np.quantile(sb, 0.5) - np.quantile(sa, 0.5)) / sa.std()
    assert m.quantile_shift["p50"] == pytest.approx(q, abs=1e-6)
