"""Exactly-once output: dead letters, key reconciliation, bad files, locks, staging cleanup."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pipeline.lock import LockError
from support import DATES, make_config, plugin_config, read_input, read_output

from pipeline.commit import CommitError, CommitPolicy, RunIdentity, commit_partitions
from pipeline.plan import run_score
from pipeline.read import discover
from pipeline.storage import resolve

pytestmark = pytest.mark.integration


def _dead_letters(out, date) -> pa.Table:
    files = sorted((out / "_dead_letter" / f"ds={date}").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def _with_null_keys(dataset, tmp_path, every: int = 50):
    """A copy of DATES[0] where every `every`-th event_id is null."""
    data = tmp_path / "nullkeys"
    dst = data / f"ds={DATES[0]}"
    dst.mkdir(parents=True)
    for f in sorted((dataset / f"ds={DATES[0]}").glob("*.parquet")):
        t = pq.read_table(f)
        ids = t.column("event_id").to_pylist()
        ids = [None if i % every == 0 else v for i, v in enumerate(ids)]
        t = t.set_column(t.schema.get_field_index("event_id"), "event_id", pa.array(ids, pa.string()))
        pq.write_table(t, dst / f.name)
    return data


def test_rows_that_cannot_be_scored_go_to_dead_letter_with_a_reason(
    ray_cluster, dataset, checkpoints, tmp_path
):
    model_uri, _ = checkpoints.entries["safetensors"]
    spec = checkpoints.spec.to_dict()
    for f in spec["dense"]:
        if f["name"] == "price":
            f["on_nonfinite"] = "reject"  # the synthetic data has ~2 % null prices
    data = _with_null_keys(dataset, tmp_path)
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
    manifest = json.loads((out / f"ds={DATES[0]}" / "_manifest.json").read_text())
    assert manifest["dead_letter_rows"] == dead.num_rows == report["rows"]["dead_letter"]
    assert manifest["extra"]["dead_letter_reasons"]["null key column 'event_id'"] == null_key.num_rows


def test_too_many_bad_rows_fail_the_run_and_publish_nothing(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    data = _with_null_keys(dataset, tmp_path, every=20)  # 5 % > the default 1 %
    out = tmp_path / "preds"
    with pytest.raises(CommitError, match=r"cannot be scored, over output.max_bad_row_fraction=0.01"):
        run_score(make_config(str(data), model_uri, str(out)), [DATES[0]], force=True)
    assert not (out / f"ds={DATES[0]}").exists()
    assert not (out / "_dead_letter" / f"ds={DATES[0]}").exists()


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


def _stage(staging, date, tables):
    d = staging / f"ds={date}"
    d.mkdir(parents=True)
    for i, t in enumerate(tables):
        pq.write_table(t, d / f"part-x-{i:06d}-0.parquet")


def test_reconciliation_catches_a_duplicated_block_hiding_a_lost_one(dataset, tmp_path):
    """Same row count, wrong rows: checked by key, nothing published."""
    inputs = discover(resolve(str(dataset)), [DATES[0]])
    inp = read_input(str(dataset), DATES[0]).select(["event_id", "user_id", "item_id"])
    out = resolve(str(tmp_path / "out"))
    staging = tmp_path / "out" / "_staging" / "run-x"
    half = inp.num_rows // 2
    # rows [0, half) twice, rows [half, n) lost... plus padding to keep the count equal
    bad = [inp.slice(0, half), inp.slice(0, half), inp.slice(2 * half, inp.num_rows - 2 * half)]
    assert sum(t.num_rows for t in bad) == inp.num_rows
    _stage(staging, DATES[0], bad)
    run = RunIdentity("run-x", "t", "v", "sha", "cfg")
    with pytest.raises(CommitError, match="keys differ"):
        commit_partitions(out, out.join("_staging", "run-x"), inputs, run, CommitPolicy(["event_id"]))
    assert not (tmp_path / "out" / f"ds={DATES[0]}").exists()

    # counts-only verification would have let it through: the key check is what caught it
    shutil.rmtree(staging)
    _stage(staging, DATES[0], [inp])  # the honest output passes
    manifests = commit_partitions(out, out.join("_staging", "run-x"), inputs, run, CommitPolicy(["event_id"]))
    assert manifests[0].output_rows == inp.num_rows


def test_bad_files_are_skipped_and_listed_when_configured(ray_cluster, dataset, checkpoints, tmp_path):
    data = tmp_path / "events"
    shutil.copytree(dataset, data)
    corrupt = data / f"ds={DATES[0]}" / "part-00001.parquet"
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(data), model_uri, str(out), input={"on_bad_file": "skip"})
    report = run_score(cfg, [DATES[0], "2031-02-02"])

    assert [s["date"] for s in report["skipped_inputs"]] == ["2031-02-02", DATES[0]]
    assert "does not exist" in report["skipped_inputs"][0]["reason"]
    assert "part-00001.parquet" in report["skipped_inputs"][1]["uri"]
    manifest = json.loads((out / f"ds={DATES[0]}" / "_manifest.json").read_text())
    assert [s["uri"] for s in manifest["extra"]["skipped_input_files"]] == [
        report["skipped_inputs"][1]["uri"]
    ]
    assert read_output(str(out), DATES[0]).num_rows == 2000  # the two good shards of 1000 rows

    with pytest.raises(Exception, match=r"part-00001.parquet: not a readable Parquet file"):
        run_score(make_config(str(data), model_uri, str(out)), [DATES[0]], force=True)


def test_a_live_lock_on_the_date_refuses_a_second_run(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    lock = out / "_locks" / f"ds={DATES[0]}.json"
    lock.parent.mkdir(parents=True)
    holder = {
        "run_id": "other-run",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "heartbeat": time.time(),
    }
    lock.write_text(json.dumps(holder))
    cfg = make_config(str(dataset), model_uri, str(out))
    with pytest.raises(LockError, match="run other-run"):
        run_score(cfg, [DATES[0]])
    assert not (out / f"ds={DATES[0]}").exists()

    # the holder's process is gone: the lock is taken over at once
    holder["pid"] = 2**22 + 12345
    lock.write_text(json.dumps(holder))
    run_score(cfg, [DATES[0]])
    assert read_output(str(out), DATES[0]).num_rows == 3000
    assert not lock.exists()  # released at the end


def test_staging_leftovers_of_dead_runs_are_cleaned(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    old = out / "_staging" / "itest-20200101T000000Z-abcdef" / f"ds={DATES[0]}"
    old.mkdir(parents=True)
    (old / "part-junk.parquet").write_bytes(b"junk")
    run_score(make_config(str(dataset), model_uri, str(out)), [DATES[0]])
    assert not (out / "_staging" / "itest-20200101T000000Z-abcdef").exists()
    assert read_output(str(out), DATES[0]).num_rows == 3000
