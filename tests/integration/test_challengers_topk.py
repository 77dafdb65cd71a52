"""Challengers beside a top-K champion (output.top_k), on a real local Ray (the staged pool): each
replica scores every model, each model's top-K per user goes through the same shuffle into its own
Delta table, read back here with deltalake and checked against the models called directly; the
failing challenger leaves nothing, the champion commits first, exit 8; the comparison of the lists
matches a direct computation on the committed tables; a rerun is a no-op."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import scipy.stats
import torch
from deltalake import DeltaTable
from support import DATES, read_delta, read_input, read_output
from testmodels import Raises, TwoHeads

from jobs.synthetic import SyntheticSpec, write_days
from models.features import transform_table
from pipeline.config import config_from_dict
from pipeline.errors import ChallengerError
from pipeline.run.challengers import raise_for_challengers
from pipeline.run.score import run_score
from pipeline.stages.topk import NON_FINITE_SCORE
from pipeline.storage import resolve

pytestmark = pytest.mark.integration

FEW_USERS = SyntheticSpec(rows_per_day=3000, shards_per_day=3, n_users=60, n_items=800)
K, K_CHALLENGER = 5, 3


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """About 50 candidates per user and date: lists that are full and can differ."""
    root = tmp_path_factory.mktemp("topk-chall") / "events"
    write_days(resolve(str(root)), DATES, FEW_USERS)
    return root


def _scripted(module: torch.nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)


def _expected(model, inp: pa.Table, spec, k: int) -> dict[int, dict[str, list]]:
    """Each user's k best (p_click descending, ties by event_id, item_id) from the model called
    directly, and the user's number of rows with a finite p_click."""
    feats = transform_table(inp, spec)
    with torch.inference_mode():
        out = model(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"]))
    scored = inp.select(["event_id", "user_id", "item_id"])
    scored = scored.append_column("p_click", pa.array(out["p_click"].numpy()))
    scored = scored.filter(pc.is_finite(scored.column("p_click"))).sort_by(
        [
            ("user_id", "ascending"),
            ("p_click", "descending"),
            ("event_id", "ascending"),
            ("item_id", "ascending"),
        ]
    )
    users: dict[int, dict[str, list]] = {}
    for row in scored.to_pylist():
        u = users.setdefault(row["user_id"], {"event_id": [], "p_click": [], "n": 0})
        u["n"] += 1
        if len(u["event_id"]) < k:
            u["event_id"].append(row["event_id"])
            u["p_click"].append(row["p_click"])
    return users


def _direct_scores(model, inp: pa.Table, spec) -> np.ndarray:
    """p_click of every input row (in the input's order) from the model called directly."""
    feats = transform_table(inp, spec)
    with torch.inference_mode():
        return model(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"]))["p_click"].numpy()


def _check_table(uri: str, inp: pa.Table, want: dict, date: str) -> pa.Table:
    got = read_output(uri, date).sort_by("user_id")
    assert got.column("user_id").to_pylist() == sorted(want)  # every user once
    for row in got.to_pylist():
        exp = want[row["user_id"]]
        assert row["event_id"] == exp["event_id"] and row["candidates"] == exp["n"]
        np.testing.assert_allclose(row["p_click"], exp["p_click"], atol=1e-6)
    dead = read_delta(f"{uri}/_dead_letter", date=date)
    assert sum(got.column("candidates").to_pylist()) + dead.num_rows == inp.num_rows
    return got


@pytest.mark.parametrize(
    "mode",
    [
        "auto",  # CPU only: fused read -> preprocess -> every model tasks
        pytest.param("staged", marks=pytest.mark.slow),  # an actor pool whose replicas hold every model
    ],
)
def test_top_k_challengers_each_into_its_own_table(ray_cluster, crowded, checkpoints, tmp_path, mode):
    nd = len(checkpoints.spec.dense)
    torch.manual_seed(0)
    champion = TwoHeads(nd, nan_click_above=2.0)  # NaN p_click: dead letters of the ranking
    torch.manual_seed(1)
    seed1 = TwoHeads(nd)
    raw = {
        "name": "chall-topk",
        "input": {"uri": str(crowded)},
        "model": {"uri": _scripted(champion, tmp_path / "champion.pt")},
        "preprocessing": {"batch_size": 1024, "features": checkpoints.spec.to_dict()},
        "predict": {"batch_size": 1024, "max_replicas": 1, "mode": mode},
        "ray": {"runner": "ray"},
        "output": {
            "uri": str(tmp_path / "champion"),
            "key_columns": ["event_id", "user_id", "item_id"],
            "score_columns": ["p_click", "p_convert"],
            "max_bad_row_fraction": 0.5,
            "top_k": {"group_by": ["user_id"], "k": K, "order_by": "p_click", "partitions": 2},
        },
        "challengers": [
            {
                "name": "seed1",
                "model": {"uri": _scripted(seed1, tmp_path / "seed1.pt")},
                "output": {"uri": str(tmp_path / "seed1"), "top_k": {"k": K_CHALLENGER}},
                "compare_column": "p_click",
            },
            {
                "name": "boom",
                "model": {"uri": _scripted(Raises(), tmp_path / "boom.pt")},
                "output": {"uri": str(tmp_path / "boom")},
            },
            {  # the champion's model, allowing no dead letter: its NaN rows fail its reconciliation
                "name": "strict",
                "model": {"uri": str(tmp_path / "champion.pt")},
                "output": {"uri": str(tmp_path / "strict"), "max_bad_row_fraction": 0.0},
            },
        ],
        "compare": {"k": 10},
    }
    cfg = config_from_dict(raw)
    report = run_score(cfg, [DATES[0]])
    assert report.pool.mode == ("fused" if mode == "auto" else mode) and report.status == "succeeded"
    ok, boom, strict = report.challengers
    assert ok.status == "committed" and ok.dates_committed == [DATES[0]], ok.error
    assert boom.status == "failed" and "challenger model raised on purpose" in boom.error
    assert strict.status == "failed" and "max_bad_row_fraction=0" in strict.error
    with pytest.raises(ChallengerError):  # `batchscore score` exits 8
        raise_for_challengers(report)

    inp = read_input(str(crowded), DATES[0])
    a = _check_table(str(tmp_path / "champion"), inp, _expected(champion, inp, checkpoints.spec, K), DATES[0])
    b = _check_table(
        str(tmp_path / "seed1"), inp, _expected(seed1, inp, checkpoints.spec, K_CHALLENGER), DATES[0]
    )
    dead = read_delta(str(tmp_path / "champion" / "_dead_letter"), date=DATES[0])
    assert dead.num_rows > 0 and set(dead.column("reason").to_pylist()) == {NON_FINITE_SCORE}
    assert set(b.column("model_version").to_pylist()) != set(a.column("model_version").to_pylist())
    # the champion's commit came first; the failed challenger left nothing
    champ_at = DeltaTable(str(tmp_path / "champion")).history()[0]["timestamp"]
    assert champ_at <= DeltaTable(str(tmp_path / "seed1")).history()[0]["timestamp"]
    for failed in ("boom", "strict"):  # nothing of them published, their files removed
        assert not (tmp_path / failed / "_delta_log").exists()
        assert not list((tmp_path / failed).rglob("*.parquet"))

    # the comparison, from the lists as committed: the first min(10, 5, 3) items of each
    (cmp,) = ok.comparisons
    kk = 3
    la = {r["user_id"]: r for r in a.to_pylist()}
    lb = {r["user_id"]: r for r in b.to_pylist()}
    users = sorted(set(la) & set(lb))
    jac = [
        len(set(la[u]["event_id"][:kk]) & set(lb[u]["event_id"][:kk]))
        / len(set(la[u]["event_id"][:kk]) | set(lb[u]["event_id"][:kk]))
        for u in users
    ]
    top1 = [la[u]["event_id"][0] != lb[u]["event_id"][0] for u in users]
    assert cmp.groups == len(users) and cmp.unmatched == len(set(la) ^ set(lb))
    assert cmp.topk_jaccard == pytest.approx(np.mean(jac), abs=1e-12)
    assert cmp.top1_changed == pytest.approx(np.mean(top1), abs=1e-12)
    # the scores: every row's, before the ranking, as the two models score it (kept while scoring)
    sa, sb = _direct_scores(champion, inp, checkpoints.spec), _direct_scores(seed1, inp, checkpoints.spec)
    finite = np.isfinite(sa) & np.isfinite(sb)
    assert cmp.scores_of == "rows" and not cmp.sampled and cmp.rows == int(finite.sum())
    assert cmp.spearman == pytest.approx(scipy.stats.spearmanr(sa[finite], sb[finite]).statistic, abs=1e-6)
    assert cmp.mean_shift == pytest.approx(sb[finite].mean() - sa[finite].mean(), abs=1e-6)
    assert cmp.verdict in ("agrees", "disagrees") and cmp.plot
    assert not list((tmp_path / "seed1" / "_runs").glob("*/pairs.*"))  # used up

    # without the failed ones, a rerun is a no-op for the champion and the committed challenger
    versions = [DeltaTable(str(tmp_path / t)).version() for t in ("champion", "seed1")]
    del raw["challengers"][1:]
    again = run_score(config_from_dict(raw), [DATES[0]])
    assert again.status == "skipped"
    assert [DeltaTable(str(tmp_path / t)).version() for t in ("champion", "seed1")] == versions

    # two dates and a new challenger: seed1 scores only the date it lacks (the other date's rows
    # are not passed through it), the new one both; the champion's first date is replaced as it was
    raw["challengers"].append(
        {
            "name": "late",
            "model": {"uri": str(tmp_path / "seed1.pt")},
            "output": {"uri": str(tmp_path / "late")},
        }
    )
    third = run_score(config_from_dict(raw), DATES)
    seed1_again, late = third.challengers
    assert seed1_again.dates_committed == [DATES[1]] and late.dates_committed == DATES
    assert DeltaTable(str(tmp_path / "seed1")).version() == versions[1] + 1
    for d in DATES:
        inp = read_input(str(crowded), d)
        _check_table(str(tmp_path / "champion"), inp, _expected(champion, inp, checkpoints.spec, K), d)
        for t, k in (("seed1", K_CHALLENGER), ("late", K)):
            _check_table(str(tmp_path / t), inp, _expected(seed1, inp, checkpoints.spec, k), d)
    assert [len(c.comparisons) for c in third.challengers] == [2, 2]
    # seed1's first date was not scored in this run: its scores are compared on the lists
    assert [x.scores_of for x in seed1_again.comparisons] == ["lists", "rows"]
    assert [x.scores_of for x in late.comparisons] == ["rows", "rows"]
    first = seed1_again.comparisons[0]
    la = {r["user_id"]: r for r in read_output(str(tmp_path / "champion"), DATES[0]).to_pylist()}
    lb = {r["user_id"]: r for r in read_output(str(tmp_path / "seed1"), DATES[0]).to_pylist()}
    users = sorted(set(la) & set(lb))
    pairs = [
        (
            dict(zip(la[u]["event_id"][:kk], la[u]["p_click"][:kk], strict=True))[e],
            dict(zip(lb[u]["event_id"][:kk], lb[u]["p_click"][:kk], strict=True))[e],
        )
        for u in users
        for e in set(la[u]["event_id"][:kk]) & set(lb[u]["event_id"][:kk])
    ]
    assert first.rows == len(pairs)
    sa = np.concatenate([la[u]["p_click"][:kk] for u in users])
    sb = np.concatenate([lb[u]["p_click"][:kk] for u in users])
    assert first.mean_shift == pytest.approx(sb.mean() - sa.mean(), abs=1e-6)


@pytest.mark.slow
def test_top_k_challengers_on_s3(ray_cluster, s3, crowded, checkpoints, tmp_path):
    """The same on the local S3 server, staged replicas: each model's groups in its own table on
    S3, the failed challenger's objects removed, the score pairs used up (about 30 s)."""
    from support import latest_commit

    from pipeline.config import StorageConfig

    bucket = s3.make_bucket("batchscore-topk-challengers")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    root = resolve(f"s3://{bucket}/events", storage)
    for d in DATES[:1]:
        for f in sorted((crowded / f"ds={d}").glob("*.parquet")):
            with root.fs.open_output_stream(root.join(f"ds={d}", f.name).path) as out:
                out.write(f.read_bytes())
    nd = len(checkpoints.spec.dense)
    torch.manual_seed(0)
    champion = TwoHeads(nd)
    torch.manual_seed(1)
    seed1 = TwoHeads(nd)
    raw = {
        "name": "chall-topk-s3",
        "input": {"uri": f"s3://{bucket}/events"},
        "model": {"uri": _scripted(champion, tmp_path / "champion.pt")},
        "preprocessing": {"features": checkpoints.spec.to_dict()},
        "predict": {"mode": "staged", "max_replicas": 1},
        "ray": {"runner": "ray"},
        "storage": {"endpoint_url": s3.endpoint},
        "output": {
            "uri": f"s3://{bucket}/champion",
            "key_columns": ["event_id", "user_id", "item_id"],
            "score_columns": ["p_click", "p_convert"],
            "top_k": {"group_by": ["user_id"], "k": K, "partitions": 2},
        },
        "challengers": [
            {
                "name": "seed1",
                "model": {"uri": _scripted(seed1, tmp_path / "seed1.pt")},
                "output": {"uri": f"s3://{bucket}/seed1"},
            },
            {
                "name": "boom",
                "model": {"uri": _scripted(Raises(), tmp_path / "boom.pt")},
                "output": {"uri": f"s3://{bucket}/boom"},
            },
        ],
    }
    report = run_score(config_from_dict(raw), DATES[:1])
    ok, boom = report.challengers
    assert (ok.status, boom.status) == ("committed", "failed") and report.pool.mode == "staged"
    inp = read_input(f"s3://{bucket}/events", DATES[0], storage)
    for name, model in (("champion", champion), ("seed1", seed1)):
        want = _expected(model, inp, checkpoints.spec, K)
        got = read_output(f"s3://{bucket}/{name}", DATES[0], storage)
        assert sorted(got.column("user_id").to_pylist()) == sorted(want)
        for row in got.to_pylist():
            assert row["event_id"] == want[row["user_id"]]["event_id"]
        assert latest_commit(f"s3://{bucket}/{name}", DATES[0], storage)["output_rows"] == got.num_rows
    assert not [k for k in s3.keys(bucket, "boom/") if k.endswith(".parquet")]
    assert not [k for k in s3.keys(bucket, "seed1/_runs/") if "/pairs." in k]
    assert ok.comparisons[0].scores_of == "rows" and ok.comparisons[0].rows == inp.num_rows
