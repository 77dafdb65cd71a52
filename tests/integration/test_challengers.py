"""Champion and challengers in one pass (config `challengers`): each model's predictions in its own
Delta table, reconciled and committed per date, the champion's first; a challenger that fails
never blocks the champion (exit 8); reruns are no-ops; the comparison matches scipy on the tables
as a Delta reader sees them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import yaml
from deltalake import DeltaTable
from support import DATES, KEYS, SMALL_FEATURES, SYNTH, assert_keys_exact, direct_scores, read_output, run_cli
from testmodels import Raises, TwoHeads

from jobs.synthetic import LABEL, generate_day
from pipeline.config import config_from_dict
from pipeline.reporting.schema import load
from pipeline.reporting.summary import format_summary
from pipeline.run.score import run_score

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, checkpoints):
    """The same DLRM trained with another seed: the challenger of a retrain."""
    from models.checkpoint import save_checkpoint
    from models.training import train_dlrm

    root = tmp_path_factory.mktemp("challenger")
    result = train_dlrm(
        generate_day("2026-09-30", SYNTH), SMALL_FEATURES, LABEL, epochs=1, batch_size=512, seed=1
    )
    save_checkpoint(
        str(root / "model"),
        result.model,
        format="safetensors",
        version="test-seed1",
        feature_spec=result.spec,
        architecture=result.architecture,
        score_reference=result.score_reference,
    )
    return str(root / "model")


def _raw(data, champion: str, out, challengers: list[dict], **extra) -> dict:
    raw = {
        "name": "chall",
        "input": {"uri": str(data)},
        "model": {"uri": champion},
        "predict": {"batch_size": 1024},
        "preprocessing": {"batch_size": 1024},
        "output": {"uri": str(out / "champion"), "key_columns": KEYS, "target_rows_per_file": 2000},
        "ray": {"runner": "local"},
        "challengers": challengers,
        "compare": {"group_by": ["user_id"], "k": 5},
    }
    raw.update(extra)
    return raw


def _versions(*uris: str) -> list[int]:
    return [DeltaTable(u).version() for u in uris]


def test_both_tables_committed_compared_and_a_rerun_is_a_no_op(dataset, checkpoints, second_model, tmp_path):
    champion, _ = checkpoints.entries["safetensors"]
    cfg = config_from_dict(
        _raw(
            dataset,
            champion,
            tmp_path,
            [{"name": "seed1", "model": {"uri": second_model}, "output": {"uri": str(tmp_path / "seed1")}}],
            report={"prometheus_textfile": str(tmp_path / "batchscore.prom")},
        )
    )
    report = run_score(cfg, [DATES[0]])
    (ch,) = report.challengers
    assert ch.status == "committed" and ch.dates_committed == [DATES[0]] and ch.error is None
    for table in ("champion", "seed1"):  # every input key exactly once in each table
        assert_keys_exact(dataset, tmp_path / table, DATES[0])
    # the champion's commit came first
    champ_log = DeltaTable(str(tmp_path / "champion")).history()[0]["timestamp"]
    chall_log = DeltaTable(str(tmp_path / "seed1")).history()[0]["timestamp"]
    assert champ_log <= chall_log

    a = read_output(str(tmp_path / "champion"), DATES[0]).sort_by("event_id")
    b = read_output(str(tmp_path / "seed1"), DATES[0]).sort_by("event_id")
    assert a.column("event_id").equals(b.column("event_id"))
    assert set(b.column("model_version").to_pylist()) == {"test-seed1"}
    # the challenger's scores are its model's, called directly
    from support import read_input

    inp = read_input(str(dataset), DATES[0]).sort_by("event_id")
    np.testing.assert_allclose(
        b.column("score").to_numpy(), direct_scores(second_model, inp, checkpoints.spec), rtol=1e-5, atol=1e-6
    )
    (cmp,) = ch.comparisons
    sa, sb = a.column("score").to_numpy().astype(float), b.column("score").to_numpy().astype(float)
    assert cmp.rows == a.num_rows and not cmp.sampled and cmp.unmatched == 0
    assert cmp.spearman == pytest.approx(scipy.stats.spearmanr(sa, sb).statistic, abs=1e-9)
    assert cmp.mean_shift == pytest.approx(sb.mean() - sa.mean(), abs=1e-6)
    assert cmp.groups == len(set(a.column("user_id").to_pylist()))
    # kept as scored (input order, user ids as they are) = read back from the tables (key-hash
    # order, user ids hashed): only a tie at a group's k-th place could tell them apart
    from pipeline.run.comparison import compare_date

    back = compare_date(
        cfg,
        DeltaTable(str(tmp_path / "champion")),
        DeltaTable(str(tmp_path / "seed1")),
        DATES[0],
        "score",
        "score",
    )
    assert back.unmatched == 0 and back.rows == cmp.rows and back.groups == cmp.groups
    for m in ("spearman", "psi", "mean_shift", "topk_jaccard", "top1_changed"):
        assert getattr(cmp, m) == pytest.approx(getattr(back, m), abs=1e-12), m
    assert cmp.quantile_shift == pytest.approx(back.quantile_shift, abs=1e-12)
    assert ch.verdict in ("agrees", "disagrees") and len(cmp.plot) > 0
    # in the summary, the page (a sampled scatter) and the Prometheus textfile
    summary = format_summary(report)
    assert "challengers vs champion" in summary
    assert any(line.split()[:3] == ["seed1", DATES[0], cmp.verdict] for line in summary.splitlines())
    page = (tmp_path / "champion" / "_runs" / report.run_id / "report.html").read_text()
    assert 'data-plot="challenger-scatter"' in page and 'data-challenger="seed1"' in page
    prom = (tmp_path / "batchscore.prom").read_text()
    assert f'batchscore_challenger_spearman{{job="chall",challenger="seed1",date="{DATES[0]}"}}' in prom
    assert load(Path(report.report_uri).read_text()).challengers[0].comparisons[0].spearman == cmp.spearman

    before = _versions(str(tmp_path / "champion"), str(tmp_path / "seed1"))
    again = run_score(cfg, [DATES[0]])
    assert again.status == "skipped" and again.skipped_committed == [DATES[0]]
    assert _versions(str(tmp_path / "champion"), str(tmp_path / "seed1")) == before


def test_a_failing_challenger_never_blocks_the_champion(dataset, checkpoints, second_model, tmp_path):
    """One challenger's model raises: the champion and the healthy challenger commit, the failed
    one has nothing in its table, and the CLI exits 8. Fixed, the next run commits it alone
    (the champion's date is replaced by the same scores)."""
    champion, _ = checkpoints.entries["safetensors"]
    boom = tmp_path / "raises.pt"
    torch.jit.save(torch.jit.script(Raises()), str(boom))
    features = {"features": checkpoints.spec.to_dict()}
    challengers = [
        {
            "name": "boom",
            "model": {"uri": str(boom)},
            "preprocessing": features,
            "output": {"uri": str(tmp_path / "boom")},
        },
        {
            "name": "heads",
            "model": {"uri": str(tmp_path / "heads.pt")},
            "preprocessing": features,
            "output": {"uri": str(tmp_path / "heads"), "score_columns": ["p_click", "p_convert"]},
            "compare_column": "p_click",
        },
    ]
    heads_model = TwoHeads(len(checkpoints.spec.dense)).eval()
    torch.jit.save(torch.jit.script(heads_model), str(tmp_path / "heads.pt"))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(_raw(dataset, champion, tmp_path, challengers)))
    # `validate` runs each challenger's model on a few rows: the raising one is named
    proc = run_cli(["validate", str(config), "--date", DATES[0]], None)
    assert proc.returncode == 2 and "raises.pt" in proc.stderr, proc.stderr[-3000:]
    proc = run_cli(["score", str(config), "--date", DATES[0]], None)
    assert proc.returncode == 8, proc.stderr[-3000:]
    assert "boom" in proc.stderr and "challenger model raised on purpose" in proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])  # the final line, as for any run
    assert last["status"] == "succeeded" and last["challengers"] == {"boom": "failed", "heads": "committed"}
    assert_keys_exact(dataset, tmp_path / "champion", DATES[0])
    assert_keys_exact(dataset, tmp_path / "heads", DATES[0])
    # the multi-head challenger: every head written, each the model's own output for its row
    from support import read_input

    from models.features import transform_table

    inp = read_input(str(dataset), DATES[0]).sort_by("event_id")
    feats = transform_table(inp, checkpoints.spec)
    with torch.inference_mode():
        want = heads_model(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"]))
    got = read_output(str(tmp_path / "heads"), DATES[0]).sort_by("event_id")
    assert "score" not in got.column_names
    for head in ("p_click", "p_convert"):
        np.testing.assert_allclose(got.column(head).to_numpy(), want[head].numpy(), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "boom" / "_delta_log").exists()
    assert not list((tmp_path / "boom").rglob("*.parquet"))  # its uncommitted files removed

    # fixed: the next run scores the date for it (the others are done: replaced, same rows)
    challengers[0]["model"] = {"uri": champion}
    challengers[0].pop("preprocessing")
    config.write_text(yaml.safe_dump(_raw(dataset, champion, tmp_path, challengers)))
    proc = run_cli(["score", str(config), "--date", DATES[0]], None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_keys_exact(dataset, tmp_path / "boom", DATES[0])
    a = read_output(str(tmp_path / "champion"), DATES[0]).sort_by("event_id")
    b = read_output(str(tmp_path / "boom"), DATES[0]).sort_by("event_id")
    np.testing.assert_array_equal(a.column("score").to_numpy(), b.column("score").to_numpy())


@pytest.mark.slow
def test_demo_challenger_kind_end_to_end(tmp_path):
    """`batchscore demo --kind challenger`: two DLRMs trained with different seeds, scored in one
    pass, both tables committed, the comparison in the summary and on the page (about 60 s)."""
    work = tmp_path / "demo"
    args = ["demo", "--workdir", str(work), "--rows-per-day", "4000", "--days", "2", "--kind", "challenger"]
    proc = run_cli(args, None, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "challengers vs champion" in proc.stdout and "challenger seed1: committed" in proc.stdout
    assert_keys_exact(work / "data", work / "predictions-challenger", "2026-11-02")
    assert_keys_exact(work / "data", work / "predictions-challenger-seed1", "2026-11-02")
    pages = list((work / "predictions-challenger" / "_runs").rglob("report.html"))
    assert len(pages) == 1 and 'data-plot="challenger-scatter"' in pages[0].read_text()


def _healthy_and_raising(checkpoints, second_model: str, tmp_path: Path) -> list[dict]:
    """Two challengers: seed1 (another seed of the champion) and boom, a TorchScript model that
    raises, with its own preprocessing (the checkpoint's feature spec)."""
    boom = tmp_path / "raises.pt"
    torch.jit.save(torch.jit.script(Raises()), str(boom))
    return [
        {"name": "seed1", "model": {"uri": second_model}, "output": {"uri": str(tmp_path / "seed1")}},
        {
            "name": "boom",
            "model": {"uri": str(boom)},
            "preprocessing": {"features": checkpoints.spec.to_dict()},
            "output": {"uri": str(tmp_path / "boom")},
        },
    ]


@pytest.mark.slow
def test_actors_mode_replicas_hold_every_model(ray_cluster, dataset, checkpoints, second_model, tmp_path):
    """predict.mode actors: each replica process scores every model on a unit's slices and writes
    each table's files; a challenger raising in a replica is reported by the driver, the champion
    and the healthy challenger commit (about 30 s with the session's Ray up: slow tier)."""
    champion, _ = checkpoints.entries["safetensors"]
    challengers = _healthy_and_raising(checkpoints, second_model, tmp_path)
    raw = _raw(dataset, champion, tmp_path, challengers, ray={"runner": "ray"})
    raw["predict"].update(mode="actors", max_replicas=2)
    report = run_score(config_from_dict(raw), [DATES[0]])
    assert report.pool.mode == "actors"
    seed1, failed = report.challengers
    assert seed1.status == "committed" and failed.status == "failed"
    assert "challenger model raised on purpose" in failed.error
    assert_keys_exact(dataset, tmp_path / "champion", DATES[0])
    assert_keys_exact(dataset, tmp_path / "seed1", DATES[0])
    assert not list((tmp_path / "boom").rglob("*.parquet"))
    assert seed1.comparisons[0].rows == read_output(str(tmp_path / "champion"), DATES[0]).num_rows


@pytest.fixture
def one_gpu_node(ray_cluster):
    """A node declaring one (logical) GPU: the GPU path's shape on CPU, replicas sharing it."""
    node = ray_cluster.add_node(num_cpus=2, num_gpus=1)
    ray_cluster.wait_for_nodes()
    yield node
    ray_cluster.remove_node(node)
    ray_cluster.wait_for_nodes()


@pytest.mark.slow
def test_challengers_in_pools_of_their_own(
    ray_cluster, one_gpu_node, dataset, checkpoints, second_model, tmp_path, caplog
):
    """predict.challengers_placement own on a node declaring one GPU shared by 3 replicas: the
    champion's pool reads and preprocesses each unit once and feeds each challenger's pool of one
    replica. The healthy challenger's table holds every input key once, with its model's scores,
    and is compared; the raising one (its own preprocessing, made in the champion's replicas)
    fails in its pool while the champion commits (about 30 s with the session's Ray up: slow)."""
    from support import read_input

    from pipeline.errors import ChallengerError
    from pipeline.run.challengers import raise_for_challengers

    champion, _ = checkpoints.entries["safetensors"]
    challengers = _healthy_and_raising(checkpoints, second_model, tmp_path)
    raw = _raw(dataset, champion, tmp_path, challengers, ray={"runner": "ray"})
    raw["predict"].update(
        mode="actors", challengers_placement="own", replicas_per_gpu=3, num_cpus_per_replica=0.5
    )
    with caplog.at_level("INFO", logger="batchscore"):
        report = run_score(config_from_dict(raw), [DATES[0]])
    assert "challenger seed1: 1 replica(s) of its own" in caplog.text
    place = report.pool.placement
    assert place.challengers == "own" and place.own == ["boom", "seed1"]
    assert place.replicas == {"champion": 1, "boom": 1, "seed1": 1} and report.pool.num_gpus > 0
    assert place.model_mb["champion"] > 0 and place.model_mb["seed1"] > 0
    assert report.status == "succeeded"
    seed1, failed = report.challengers
    assert seed1.status == "committed" and seed1.dates_committed == [DATES[0]]
    assert failed.status == "failed" and "challenger model raised on purpose" in failed.error
    assert_keys_exact(dataset, tmp_path / "champion", DATES[0])
    assert_keys_exact(dataset, tmp_path / "seed1", DATES[0])
    assert not list((tmp_path / "boom").rglob("*.parquet"))
    inp = read_input(str(dataset), DATES[0]).sort_by("event_id")
    got = read_output(str(tmp_path / "seed1"), DATES[0]).sort_by("event_id")
    want = direct_scores(second_model, inp, checkpoints.spec)
    np.testing.assert_allclose(got.column("score").to_numpy(), want, rtol=1e-5, atol=1e-6)
    (cmp,) = seed1.comparisons
    assert cmp.rows == read_output(str(tmp_path / "champion"), DATES[0]).num_rows and cmp.unmatched == 0
    with pytest.raises(ChallengerError, match="boom"):  # `batchscore score` exits 8
        raise_for_challengers(report)


def test_a_challenger_failing_its_commit_checks_leaves_the_champion_committed(dataset, checkpoints, tmp_path):
    """The shared preprocessing sends the rows with a null price to the dead letters of both
    tables; the champion allows 10 % of them, the challenger none: its date fails its own check
    before its commit (nothing of it published), the champion's is committed with its dead letters."""
    champion, _ = checkpoints.entries["safetensors"]
    spec = checkpoints.spec.to_dict()
    for f in spec["dense"]:
        if f["name"] == "price":
            f["on_nonfinite"] = "reject"  # the synthetic data has ~2 % null prices
    strict = {"uri": str(tmp_path / "strict"), "max_bad_row_fraction": 0.0}
    raw = _raw(
        dataset, champion, tmp_path, [{"name": "strict", "model": {"uri": champion}, "output": strict}]
    )
    raw["preprocessing"]["features"] = spec
    raw["output"]["max_bad_row_fraction"] = 0.1
    report = run_score(config_from_dict(raw), [DATES[0]])
    (ch,) = report.challengers
    assert report.status == "succeeded" and report.rows.dead_letter > 0
    assert (
        ch.status == "failed" and "reconciliation failed" in ch.error and "max_bad_row_fraction=0" in ch.error
    )
    assert read_output(str(tmp_path / "champion"), DATES[0]).num_rows == report.rows.output
    assert not (tmp_path / "strict" / "_delta_log").exists()
    assert not list((tmp_path / "strict").rglob("*.parquet"))  # its files, dead letters too, removed
    with pytest.raises(Exception, match="challenger"):
        from pipeline.run.challengers import raise_for_challengers

        raise_for_challengers(report)
