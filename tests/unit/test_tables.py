"""The Delta table helpers on real files and a real Delta table (no Ray)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commit.filestats import ReadKeys
from pipeline.commit.tables import DeltaOutput, check_partitioning, partition_values, run_files
from pipeline.config import StorageConfig, config_from_dict
from pipeline.errors import ConfigError, UserError
from pipeline.storage import resolve


def test_partition_values_from_hive_directories_null_included():
    assert partition_values("ds=2026-10-01/region=eu%20west/part-a.x.parquet") == {
        "ds": "2026-10-01",
        "region": "eu west",
    }
    assert partition_values("ds=2026-10-01/region=__HIVE_DEFAULT_PARTITION__/p.parquet")["region"] is None


def test_a_run_never_claims_the_files_of_a_run_whose_id_it_prefixes(tmp_path):
    d = tmp_path / "ds=2026-10-01"
    d.mkdir()
    for name in (
        "part-a.1-000000-0.parquet",
        "part-a-b.1-000000-0.parquet",
        "part-a-20261001T000000Z-x.parquet",
    ):
        pq.write_table(pa.table({"k": [1, 2]}), d / name)
    mine = run_files(resolve(str(tmp_path)), "ds", "2026-10-01", "a")
    assert [f.path for f in mine] == ["ds=2026-10-01/part-a.1-000000-0.parquet"]


def test_a_table_partitioned_otherwise_is_refused(tmp_path):
    out = DeltaOutput(resolve(str(tmp_path / "t")), StorageConfig(), ["ds"])
    table = out.open_or_create(pa.schema([("k", pa.int64()), ("ds", pa.string())]))
    check_partitioning(table, ["ds"])
    with pytest.raises(UserError, match=r"partitioned by \['ds'\], but output.partition_columns is"):
        check_partitioning(table, ["ds", "region"])


def test_input_inside_the_output_is_refused():
    raw = {
        "name": "j",
        "input": {"uri": "s3://b/preds/raw"},
        "model": {"uri": "/m"},
        "output": {"uri": "s3://b/preds/", "key_columns": ["k"]},
    }
    with pytest.raises(ConfigError, match="is inside output.uri"):
        config_from_dict(raw)


def _killed_runs_records(out: Path, run_id: str) -> Path:
    """What the read tasks of a run leave under OUTPUT/_runs/RUN/input_keys.ATTEMPT when the run is
    killed before its end (a run that ends deletes them): one record per read task, two dates."""
    where = out / "_runs" / run_id / "input_keys.0123456789ab"
    keys = ReadKeys(resolve(str(where)), ["event_id"], "ds")
    for date in ("2026-10-01", "2026-10-02"):
        for part in range(2):
            block = pa.table({"event_id": [f"{date}-{part}-{i}" for i in range(5)], "ds": [date] * 5})
            list(keys.record([f"/data/events/ds={date}/part-{part}.parquet"], iter([block])))
    assert len(list(where.rglob("*.json"))) == 4
    return where


def _age(paths, hours: float) -> None:
    then = time.time() - hours * 3600
    for p in paths:
        os.utime(p, (then, then))


def test_vacuum_removes_the_key_records_of_killed_runs_past_the_retention(tmp_path, capsys):
    from jobs.cli import main as cli

    out = tmp_path / "preds"
    DeltaOutput(resolve(str(out)), StorageConfig(), ["ds"]).open_or_create(
        pa.schema([("event_id", pa.string()), ("ds", pa.string())])
    )
    killed = _killed_runs_records(out, "itest-20261001T020000Z-aaaaaa")
    _age(killed.rglob("*.json"), 2)
    report = out / "_runs" / "itest-20261001T020000Z-aaaaaa" / "report.json"  # not a record: kept
    report.write_text("{}")
    _age([report], 2)
    # killed before any read task recorded (by an older version: no attempt in the folder's name):
    # folders only, their own times count
    empty = out / "_runs" / "itest-20261001T030000Z-cccccc" / "input_keys"
    (empty / "ds=2026-10-01").mkdir(parents=True)
    _age([empty / "ds=2026-10-01", empty], 2)
    # a run still reading: one record as old, its newest written now, so the folder is kept
    running = _killed_runs_records(out, "itest-20261002T020000Z-bbbbbb")
    _age(sorted(running.rglob("*.json"))[:-1], 2)

    capsys.readouterr()
    assert cli(["vacuum", str(out), "--retain-hours", "1", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "input_keys: would delete 2 key-record folder(s) of killed runs" in printed
    assert f"  {killed}" in printed and f"  {empty}" in printed and str(running) not in printed
    assert json.loads(printed.splitlines()[-1])["input_keys"] == 2
    assert len(list(killed.rglob("*.json"))) == 4  # a dry run deletes nothing

    assert cli(["vacuum", str(out), "--retain-hours", "3"]) == 0  # younger than that: kept
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["input_keys"] == 0
    assert killed.exists()

    assert cli(["vacuum", str(out), "--retain-hours", "1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["input_keys"] == 2
    assert not killed.exists() and not empty.exists() and empty.parent.exists()
    assert report.read_text() == "{}"  # the run's other files stay
    assert len(list(running.rglob("*.json"))) == 4
