"""What consumers of the predictions table see, through readers that are not batchscore's:
deltalake (delta-rs), DuckDB's delta extension and polars; during a republish, at an older version
(time travel), and after vacuum."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import SYNTH, make_config, read_delta

from jobs.synthetic import date_range, write_days
from pipeline.run.score import run_score
from pipeline.storage import resolve

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
THREE = date_range("2026-10-05", 3)


@pytest.fixture(scope="module")
def three_days(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("three") / "events"
    write_days(resolve(str(root)), THREE, SYNTH)
    return root


def test_outside_readers_see_each_date_whole_during_a_republish(
    ray_cluster, three_days, checkpoints, tmp_path
):
    out = tmp_path / "preds"
    first, _ = checkpoints.entries["safetensors"]
    second, _ = checkpoints.entries["torchscript"]
    run_score(make_config(str(three_days), first, str(out)), THREE)
    log = tmp_path / "reads.jsonl"
    reader = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "outside_reader.py"), str(out), str(log), "--seconds", "240"],
        cwd=ROOT,
    )
    try:
        time.sleep(3)  # the reader is polling before the republish starts
        run_score(make_config(str(three_days), second, str(out)), THREE)  # another model: replaces all
        time.sleep(2)
    finally:
        Path(str(log) + ".stop").touch()
        reader.wait(timeout=60)
    reads = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [r for r in reads if "error" in r]
    assert not errors, errors[:3]
    for reader_name in ("deltalake", "duckdb"):
        mine = [r["dates"] for r in reads if r["reader"] == reader_name]
        assert len(mine) >= 10, f"{reader_name}: too few reads ({len(mine)}) to say anything"
        for dates in mine:
            assert sorted(dates) == THREE, dates
            # every date whole (3000 rows) and from one model, old or new, in every read
            assert all(v[:2] == [SYNTH.rows_per_day, 1] for v in dates.values()), dates
        seen = {tuple(v[2] for _, v in sorted(dates.items())) for dates in mine}
        assert ("test-safetensors",) * 3 in seen and ("test-torchscript",) * 3 in seen, seen
    final = read_delta(str(out))
    assert set(final.column("model_version").to_pylist()) == {"test-torchscript"}


def test_last_nights_version_stays_readable_until_vacuum(
    ray_cluster, three_days, checkpoints, tmp_path, capsys
):
    import polars as pl
    from deltalake import DeltaTable

    from jobs.cli import main as cli

    out = tmp_path / "preds"
    day = THREE[0]
    run_score(make_config(str(three_days), checkpoints.entries["safetensors"][0], str(out)), [day])
    last_night = DeltaTable(str(out)).version()
    run_score(make_config(str(three_days), checkpoints.entries["torchscript"][0], str(out)), [day])

    capsys.readouterr()
    assert cli(["history", str(out)]) == 0  # the versions a user would time-travel to
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == [str(last_night), day] and "test-safetensors" in line for line in lines)
    old = read_delta(str(out), version=last_night, date=day)
    assert old.num_rows == SYNTH.rows_per_day
    assert set(old.column("model_version").to_pylist()) == {"test-safetensors"}
    old_pl = pl.read_delta(str(out), version=last_night).filter(pl.col("ds") == day)
    assert old_pl.height == SYNTH.rows_per_day and set(old_pl["model_version"]) == {"test-safetensors"}
    assert set(read_delta(str(out), date=day).column("model_version").to_pylist()) == {"test-torchscript"}

    assert cli(["vacuum", str(out)]) == 0  # default retention (7 days): last night's files stay
    assert read_delta(str(out), version=last_night, date=day).num_rows == SYNTH.rows_per_day
    assert cli(["vacuum", str(out), "--retain-hours", "0"]) == 0
    with pytest.raises(Exception, match="not found|No such file"):
        read_delta(str(out), version=last_night, date=day)
    assert read_delta(str(out), date=day).num_rows == SYNTH.rows_per_day  # tonight's is untouched


def test_vacuum_after_run_keeps_only_what_the_retention_asks(ray_cluster, three_days, checkpoints, tmp_path):
    out = tmp_path / "preds"
    day = THREE[1]
    output = {"vacuum_after_run": True, "retention_hours": 0}
    first = run_score(
        make_config(str(three_days), checkpoints.entries["safetensors"][0], str(out), output=output), [day]
    )
    assert first.vacuum["predictions"] == []  # nothing replaced yet
    old = {p.name for p in (out / f"ds={day}").glob("*.parquet")}
    second = run_score(
        make_config(str(three_days), checkpoints.entries["torchscript"][0], str(out), output=output), [day]
    )
    assert len(second.vacuum["predictions"]) == len(old)  # the replaced files, past a 0 h retention
    assert not old & {p.name for p in (out / f"ds={day}").glob("*.parquet")}
    assert read_delta(str(out), date=day).num_rows == SYNTH.rows_per_day
