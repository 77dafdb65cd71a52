"""The Delta table helpers on real files and a real Delta table (no Ray)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commit.tables import DeltaOutput, check_partitioning, partition_values, run_files
from pipeline.config import StorageConfig, config_from_dict
from pipeline.errors import ConfigError, UserError
from pipeline.filestats import ReadKeys
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


def test_committed_files_are_the_dates_files_in_the_log_with_their_footer_stats(tmp_path):
    """What a race's survivor compares its own files with: whoever wrote them, only the date's
    files of the current snapshot (a space in the table's path too), footers read, rows not."""
    from deltalake import write_deltalake

    from pipeline.commit.tables import TableFile, committed_files, table_schema
    from pipeline.filestats import write_parquet

    root = tmp_path / "the preds"
    write_deltalake(str(root), pa.table({"k": ["x"], "ds": ["2026-10-02"]}), partition_by=["ds"])
    out = DeltaOutput(resolve(str(root)), StorageConfig(), ["ds"])
    table = out.open()
    (root / "ds=2026-10-01").mkdir()
    written = []
    for i, keys in enumerate((["a", "b"], ["c"])):
        path = f"ds=2026-10-01/part-other.{i}.parquet"
        write_parquet(out.location.fs, str(root / path), pa.table({"k": keys}), ["k"])
        size = (root / path).stat().st_size
        written.append(TableFile(path, size, len(keys), 0, {"ds": "2026-10-01"}))
    schema = table_schema(pa.schema([("k", pa.string())]), ["ds"])
    out.commit_date(table, "ds", "2026-10-01", written, schema, 1, None, {}, "other")
    got = committed_files(out.location, out.open(), "ds", "2026-10-01")
    assert sorted((f.path, f.rows) for f in got) == [(w.path, w.rows) for w in written]
    assert all(f.stats is not None and f.stats.fingerprint_for(["k"]) is not None for f in got)


def test_a_failed_run_keeps_the_dead_letters_it_committed_for_a_race_winner(tmp_path):
    """A race's survivor commits only a date's dead letters (the winner's predictions stand); if
    the run then fails, its cleanup must judge each table by its own log: deleting those files
    would leave the dead-letter table pointing at files that are gone."""
    from pipeline.commit.tables import OutputTables, TableFile
    from pipeline.run.score import _discard_uncommitted

    loc = resolve(str(tmp_path / "preds"))
    tables = OutputTables(
        DeltaOutput(loc, StorageConfig(), ["ds"]),
        DeltaOutput(loc.join("_dead_letter"), StorageConfig(), ["ds"]),
        "ds",
    )
    tables.predictions.open_or_create(pa.schema([("k", pa.string()), ("ds", pa.string())]))
    dl_schema = pa.schema([("k", pa.string()), ("reason", pa.string()), ("ds", pa.string())])
    dls = tables.dead_letters.open_or_create(dl_schema)
    for root, name, columns in (
        (loc.path, "part-b.0.parquet", {"k": ["x"]}),
        (f"{loc.path}/_dead_letter", "dl-b.0.parquet", {"k": [None], "reason": ["null key"]}),
    ):
        os.makedirs(f"{root}/ds=2026-10-01", exist_ok=True)
        pq.write_table(
            pa.table(columns, schema=pa.schema([(c, pa.string()) for c in columns])),
            f"{root}/ds=2026-10-01/{name}",
        )
    dead = f"{loc.path}/_dead_letter/ds=2026-10-01/dl-b.0.parquet"
    committed = TableFile("ds=2026-10-01/dl-b.0.parquet", os.path.getsize(dead), 1, 0, {"ds": "2026-10-01"})
    tables.dead_letters.commit_date(dls, "ds", "2026-10-01", [committed], dl_schema, 1, None, {}, "b")
    _discard_uncommitted(tables, ["2026-10-01"], "b")
    assert os.path.exists(dead), "a committed dead-letter file was deleted"
    assert not os.path.exists(f"{loc.path}/ds=2026-10-01/part-b.0.parquet"), "an uncommitted file was kept"
