"""Exactly-once output: dead letters, key reconciliation, bad files, uncommitted files and vacuum."""

from __future__ import annotations

import os
import shutil
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support import (
    DATES,
    latest_commit,
    make_config,
    plugin_config,
    read_delta,
    read_input,
    read_output,
    with_null_keys,
)

from pipeline.commit.partitions import CommitPolicy, RunIdentity, commit_partitions
from pipeline.commit.tables import OutputTables
from pipeline.config import StorageConfig
from pipeline.errors import CommitError
from pipeline.run.score import run_score
from pipeline.stages.read import discover
from pipeline.storage import resolve

pytestmark = pytest.mark.integration


def _dead_letters(out, date) -> pa.Table:
    """The committed dead letters of a date, read through their Delta table."""
    return read_delta(str(out / "_dead_letter"), date=date)


def test_rows_that_cannot_be_scored_go_to_dead_letter_with_a_reason(
    ray_cluster, dataset, checkpoints, tmp_path
):
    model_uri, _ = checkpoints.entries["safetensors"]
    spec = checkpoints.spec.to_dict()
    for f in spec["dense"]:
        if f["name"] == "price":
            f["on_nonfinite"] = "reject"  # the synthetic data has ~2 % null prices
    data = with_null_keys(dataset, tmp_path)
    out = tmp_path / "preds"
    cfg = make_config(
        str(data), model_uri, str(out), preprocessing={"features": spec}, output={"max_bad_row_fraction": 0.1}
    )
    report = run_score(cfg, [DATES[0]])

    inp = read_input(str(data), DATES[0])
    got = read_output(str(out), DATES[0])
    dead = _dead_letters(out, DATES[0])
    null_key = inp.filter(pc.is_null(inp.column("event_id")))
    null_price = inp.filter(pc.and_(pc.is_valid(inp.column("event_id")), pc.is_null(inp.column("price"))))
    assert null_key.num_rows > 0 and null_price.num_rows > 0
    assert dead.num_rows == null_key.num_rows + null_price.num_rows
    assert got.num_rows + dead.num_rows == inp.num_rows == 3000
    reasons = dead.column("reason").to_pylist()
    assert reasons.count("null key column 'event_id'") == null_key.num_rows
    assert reasons.count("non-finite value in 'price' (spec says reject)") == null_price.num_rows
    # scored and dead-lettered keys are disjoint and together are the input
    scored = set(got.column("event_id").to_pylist())
    dead_ids = {k for k in dead.column("event_id").to_pylist() if k is not None}
    assert not scored & dead_ids
    assert scored | dead_ids == {k for k in inp.column("event_id").to_pylist() if k is not None}
    commit = latest_commit(str(out), DATES[0])
    assert commit["dead_letter_rows"] == dead.num_rows == report.rows.dead_letter
    reasons = report.partitions[0].dead_letter_reasons
    assert reasons["null key column 'event_id'"] == null_key.num_rows


def test_one_null_key_in_each_file_of_a_date_commits(ray_cluster, dataset, checkpoints, tmp_path):
    """Every null key hashes alike: dead-letter files must still get one name per task and batch,
    or one file overwrites another and the date can never reconcile."""
    model_uri, _ = checkpoints.entries["safetensors"]
    data = with_null_keys(dataset, tmp_path, every=1000, offset=7)  # one null per 1000-row file
    out = tmp_path / "preds"
    for mode in ("fused", "actors"):
        cfg = make_config(
            str(data), model_uri, str(out), output={"key_columns": ["event_id"]}, predict={"mode": mode}
        )
        run_score(cfg, [DATES[0]], force=True)
        dead = _dead_letters(out, DATES[0])
        assert dead.num_rows == 3 and dead.column("event_id").null_count == 3, mode
        assert read_output(str(out), DATES[0]).num_rows == 2997


def test_too_many_bad_rows_fail_the_run_and_publish_nothing(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    data = with_null_keys(dataset, tmp_path, every=20)  # 5 % > the default 1 %
    out = tmp_path / "preds"
    with pytest.raises(CommitError, match=r"cannot be scored, over output.max_bad_row_fraction=0.01"):
        run_score(make_config(str(data), model_uri, str(out)), [DATES[0]], force=True)
    assert latest_commit(str(out), DATES[0]) is None
    # the refused run removed what it wrote: nothing for a file-listing reader either
    assert not list(out.glob(f"ds={DATES[0]}/*.parquet"))
    assert not list(out.glob(f"_dead_letter/ds={DATES[0]}/*.parquet"))


def test_user_preprocessing_errors_dead_letter_their_batch(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = plugin_config(
        str(dataset), model_uri, str(out), "failing_features", output={"max_bad_row_fraction": 1.0}
    )
    run_score(cfg, [DATES[0]])
    dead = _dead_letters(out, DATES[0])
    got = read_output(str(out), DATES[0])
    assert dead.num_rows > 0 and got.num_rows + dead.num_rows == 3000
    assert set(dead.column("reason").to_pylist()) == {
        "preprocessing error: ValueError: user 7 breaks my feature code"
    }
    assert 7 in dead.column("user_id").to_pylist() and 7 not in got.column("user_id").to_pylist()


def _tables(out) -> OutputTables:
    from pipeline.commit.tables import DeltaOutput

    loc = resolve(str(out))
    return OutputTables(
        DeltaOutput(loc, StorageConfig(), ["ds"]),
        DeltaOutput(loc.join("_dead_letter"), StorageConfig(), ["ds"]),
        "ds",
    )


def _write_run_files(out, date, tables, run_id="run-x"):
    d = out / f"ds={date}"
    d.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tables):
        pq.write_table(t, d / f"part-{run_id}.{i:06d}-0.parquet")


def test_reconciliation_catches_a_duplicated_block_hiding_a_lost_one(dataset, tmp_path):
    """Same row count, wrong rows: checked by key, nothing committed."""
    inputs = discover(resolve(str(dataset)), [DATES[0]])
    inp = read_input(str(dataset), DATES[0]).select(["event_id", "user_id", "item_id"])
    out = tmp_path / "out"
    half = inp.num_rows // 2
    # rows [0, half) twice, rows [half, n) lost... plus padding to keep the count equal
    bad = [inp.slice(0, half), inp.slice(0, half), inp.slice(2 * half, inp.num_rows - 2 * half)]
    assert sum(t.num_rows for t in bad) == inp.num_rows
    _write_run_files(out, DATES[0], bad)
    run = RunIdentity("run-x", "t", "v", "sha", "cfg")
    with pytest.raises(CommitError, match="keys differ"):
        commit_partitions(_tables(out), inputs, run, CommitPolicy(["event_id"]))
    assert not (out / "_delta_log").exists(), "a refused date created or changed the table"

    # counts-only verification would have let it through: the key check is what caught it
    shutil.rmtree(out / f"ds={DATES[0]}")
    _write_run_files(out, DATES[0], [inp], run_id="run-y")  # the honest output passes
    run = RunIdentity("run-y", "t", "v", "sha", "cfg")
    commits = commit_partitions(_tables(out), inputs, run, CommitPolicy(["event_id"]))
    assert commits[0].output_rows == inp.num_rows and commits[0].version is not None
    assert read_delta(str(out), date=DATES[0]).num_rows == inp.num_rows


def test_bad_files_are_skipped_and_listed_when_configured(ray_cluster, dataset, checkpoints, tmp_path):
    data = tmp_path / "events"
    shutil.copytree(dataset, data)
    corrupt = data / f"ds={DATES[0]}" / "part-00001.parquet"
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(data), model_uri, str(out), input={"on_bad_file": "skip"})
    report = run_score(cfg, [DATES[0], "2031-02-02"])

    assert [s.date for s in report.skipped_inputs] == ["2031-02-02", DATES[0]]
    assert "does not exist" in report.skipped_inputs[0].reason
    assert "part-00001.parquet" in report.skipped_inputs[1].uri
    commit = latest_commit(str(out), DATES[0])
    assert [s["uri"] for s in commit["skipped_input_files"]] == [report.skipped_inputs[1].uri]
    assert read_output(str(out), DATES[0]).num_rows == 2000  # the two good shards of 1000 rows

    with pytest.raises(Exception, match=r"part-00001.parquet: not a readable Parquet file"):
        run_score(make_config(str(data), model_uri, str(out)), [DATES[0]], force=True)


def test_files_of_a_dead_run_are_invisible_and_vacuum_removes_them_past_retention(
    ray_cluster, dataset, checkpoints, tmp_path
):
    from jobs.cli import main as cli

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    run_score(make_config(str(dataset), model_uri, str(out)), [DATES[0]])
    live = {p.name for p in (out / f"ds={DATES[0]}").glob("*.parquet")}
    # what a run killed before its commit leaves: a prediction file and a dead-letter file
    dead = read_output(str(out), DATES[0]).slice(0, 10).drop_columns(["ds"])
    orphan = out / f"ds={DATES[0]}" / "part-itest-20200101T000000Z-abcdef-x-000000-0.parquet"
    pq.write_table(dead, orphan)
    (out / "_dead_letter" / f"ds={DATES[0]}").mkdir(parents=True, exist_ok=True)
    dl_orphan = out / "_dead_letter" / f"ds={DATES[0]}" / "dl-itest-20200101T000000Z-abcdef-0-0000.parquet"
    pq.write_table(dead.select(["event_id"]), dl_orphan)
    assert read_output(str(out), DATES[0]).num_rows == 3000, "an uncommitted file is visible"

    assert cli(["vacuum", str(out), "--retain-hours", "1"]) == 0  # too young: kept
    assert orphan.exists() and dl_orphan.exists()
    old = time.time() - 2 * 3600
    for f in (orphan, dl_orphan):
        os.utime(f, (old, old))
    assert cli(["vacuum", str(out), "--retain-hours", "1", "--dry-run"]) == 0
    assert orphan.exists()
    assert cli(["vacuum", str(out), "--retain-hours", "1"]) == 0
    assert not orphan.exists() and not dl_orphan.exists()
    assert {p.name for p in (out / f"ds={DATES[0]}").glob("*.parquet")} == live
    assert (out / "_runs").exists() and read_output(str(out), DATES[0]).num_rows == 3000


def test_a_run_id_that_prefixes_another_never_touches_its_files(ray_cluster, dataset, checkpoints, tmp_path):
    """`--run-id itest` after an automatic `itest-2026...` run of the same job: the new run must
    neither count nor delete the first run's (committed, time-travel-readable) files."""
    from deltalake import DeltaTable

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(dataset), model_uri, str(out))
    first = run_score(cfg, [DATES[0]])
    assert first.run_id.startswith("itest-")
    version = DeltaTable(str(out)).version()
    second = run_score(cfg, [DATES[0]], run_id="itest", force=True)
    assert second.status == "succeeded" and second.rows.output == 3000
    assert read_output(str(out), DATES[0]).num_rows == 3000
    assert read_delta(str(out), version=version, date=DATES[0]).num_rows == 3000  # first run's files kept
