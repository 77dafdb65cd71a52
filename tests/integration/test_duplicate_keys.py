"""Duplicate keys in the input, in each mode of output.duplicate_keys, with real runs (issue 19:
150 repeated keys passed silently with exit 0). One date of 3,000 rows plus 50 of its rows copied
into another of its files: 50 keys occur twice (100 rows)."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from support import DATES, read_delta, read_input, run_cli

from pipeline.stages.duplicates import REASON

pytestmark = pytest.mark.integration
REPEATED = 50


def _with_repeats(dataset, tmp_path):
    data = tmp_path / "events"
    src, dst = dataset / f"ds={DATES[0]}", data / f"ds={DATES[0]}"
    shutil.copytree(src, dst)
    first, second = sorted(dst.glob("*.parquet"))[:2]
    a, b = pq.read_table(first), pq.read_table(second)
    pq.write_table(pa.concat_tables([b, a.slice(0, REPEATED)]), second)
    return data, set(a.slice(0, REPEATED).column("event_id").to_pylist())


def _run(tmp_path, data, checkpoints, mode: str, runner: str, ray_address):
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / f"out-{mode}"
    cfg = tmp_path / f"job-{mode}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "dups",
                "input": {"uri": str(data)},
                "model": {"uri": model_uri},
                "ray": {"runner": runner},
                "output": {
                    "uri": str(out),
                    "key_columns": ["event_id"],
                    "duplicate_keys": mode,
                    "max_bad_row_fraction": 0.1,
                },
            }
        )
    )
    proc = run_cli(["score", str(cfg), "--date", DATES[0]], ray_address if runner == "ray" else None)
    return proc, out


def _report(out):
    (path,) = out.glob("_runs/*/report.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_fail_refuses_the_run_before_any_model_work(ray_cluster, dataset, checkpoints, tmp_path, runner):
    """ray: a new Ray of the process's own (no address), the check on threads beside its start."""
    data, repeated = _with_repeats(dataset, tmp_path)
    proc, out = _run(tmp_path, data, checkpoints, "fail", runner, None)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"ds={DATES[0]}: {REPEATED} key(s) occur more than once ({2 * REPEATED} rows)" in proc.stderr
    assert "output.duplicate_keys=fail" in proc.stderr
    assert not (out / "_delta_log").exists()
    # `validate` says so too, before a nightly run would
    checked = run_cli(["validate", str(tmp_path / "job-fail.yaml"), "--date", DATES[0]], None)
    assert checked.returncode == 2 and f"{REPEATED} key(s) occur more than once" in checked.stderr


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_dead_letter_sends_every_row_of_a_repeated_key_there(
    ray_cluster, dataset, checkpoints, tmp_path, runner
):
    data, repeated = _with_repeats(dataset, tmp_path)
    proc, out = _run(tmp_path, data, checkpoints, "dead_letter", runner, ray_cluster.address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    inp = read_input(str(data), DATES[0])
    preds = read_delta(str(out), date=DATES[0])  # deltalake: a reader that is not ours
    keys = preds.column("event_id").to_pylist()
    assert len(keys) == len(set(keys)) == inp.num_rows - 2 * REPEATED
    assert set(keys) == set(inp.column("event_id").to_pylist()) - repeated
    dead = read_delta(str(out / "_dead_letter"), date=DATES[0])
    assert dead.num_rows == 2 * REPEATED and set(dead.column("event_id").to_pylist()) == repeated
    assert pc.unique(dead.column("reason")).to_pylist() == [REASON]
    report = _report(out)
    (part,) = report["partitions"]
    assert part["duplicate_keys"] == REPEATED and part["duplicate_key_rows"] == 2 * REPEATED
    assert report["rows"]["duplicate_key_rows"] == 2 * REPEATED


def test_allow_scores_every_row_and_counts_them(ray_cluster, dataset, checkpoints, tmp_path):
    import polars as pl

    data, repeated = _with_repeats(dataset, tmp_path)
    proc, out = _run(tmp_path, data, checkpoints, "allow", "local", None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "50 key(s) occur more than once in the input (100 rows); output.duplicate_keys=allow" in proc.stderr
    )
    preds = pl.read_delta(str(out)).filter(pl.col("ds") == DATES[0])  # polars: another outside reader
    assert preds.height == 3000 + REPEATED
    counts = preds.group_by("event_id").len().filter(pl.col("len") > 1)
    assert set(counts["event_id"].to_list()) == repeated and set(counts["len"].to_list()) == {2}
    (part,) = _report(out)["partitions"]
    assert part["duplicate_keys"] == REPEATED and part["dead_letter_rows"] == 0
    assert f"repeats  {2 * REPEATED} rows carry a key that repeats within its date" in proc.stdout


def test_dead_letter_on_the_s3_server_under_ray(ray_cluster, s3, dataset, checkpoints, tmp_path):
    """The check's Ray tasks read the keys through the S3 client, as the pipeline does."""
    import pyarrow.fs as pafs

    from pipeline.config import StorageConfig
    from pipeline.storage import resolve

    bucket = s3.make_bucket("dup-keys")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    data, repeated = _with_repeats(dataset, tmp_path)
    dst = resolve(f"s3://{bucket}/events", storage)
    pafs.copy_files(
        str(data), dst.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=dst.fs
    )
    model_uri, _ = checkpoints.entries["safetensors"]
    out = f"s3://{bucket}/scores"
    cfg = tmp_path / "job-s3.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "dups-s3",
                "input": {"uri": f"s3://{bucket}/events"},
                "model": {"uri": model_uri},
                "ray": {"runner": "ray"},
                "storage": {"endpoint_url": s3.endpoint},
                "output": {
                    "uri": out,
                    "key_columns": ["event_id"],
                    "duplicate_keys": "dead_letter",
                    "max_bad_row_fraction": 0.1,
                },
            }
        )
    )
    proc = run_cli(["score", str(cfg), "--date", DATES[0]], ray_cluster.address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = read_delta(out, storage, date=DATES[0]).column("event_id").to_pylist()
    assert len(keys) == len(set(keys)) == 3000 - REPEATED and not set(keys) & repeated
    dead = read_delta(f"{out}/_dead_letter", storage, date=DATES[0])
    assert dead.num_rows == 2 * REPEATED and set(dead.column("event_id").to_pylist()) == repeated


def test_the_sharded_check_on_ray_tasks_finds_exactly_the_repeated_keys(ray_cluster, dataset, tmp_path):
    """This process is connected to the session's Ray, so the check runs as Ray tasks (the
    in-process path is tests/unit/test_duplicates.py)."""
    from pipeline.raystate import running_ray
    from pipeline.stages.duplicates import find_duplicates
    from pipeline.stages.read import discover
    from pipeline.storage import resolve

    data, repeated = _with_repeats(dataset, tmp_path)
    plan = discover(resolve(str(data)), [DATES[0]], "ds")
    assert running_ray() is not None
    on_ray = find_duplicates(plan, ["event_id"])
    assert {k for (k,) in on_ray.dates[DATES[0]].keys} == repeated
    assert on_ray.dates[DATES[0]].rows == 2 * REPEATED
    # beside the start of a Ray of the run's own: this process's threads, though Ray is up
    on_threads = find_duplicates(plan, ["event_id"], on_ray=False)
    assert on_threads.dates[DATES[0]].keys == on_ray.dates[DATES[0]].keys
    assert on_threads.dates[DATES[0]].rows == 2 * REPEATED
