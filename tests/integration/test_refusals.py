"""What a run refused before any scoring (exit 2) tells the user, and what it leaves: every
input problem of the range in one message, the input root named as input.uri, no output folder."""

from __future__ import annotations

import shutil

import pytest
import yaml
from support import DATES, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def job(tmp_path, dataset, checkpoints):
    """A config over a copy of the dataset, writing to an output folder that does not exist yet."""
    data = tmp_path / "events"
    shutil.copytree(dataset, data)
    config = tmp_path / "job.yaml"
    raw = {
        "name": "refusals",
        "input": {"uri": str(data)},
        "model": {"uri": checkpoints.entries["safetensors"][0]},
        "output": {"uri": str(tmp_path / "out" / "preds"), "key_columns": ["event_id"]},
    }
    config.write_text(yaml.safe_dump(raw))
    return config, data, tmp_path / "out"


def score(config, *dates: str):
    args = ["score", str(config)]
    for d in dates:
        args += ["--date", d]
    return run_cli(args, ray_address=None)


def test_missing_dates_and_a_corrupt_file_are_reported_together(job):
    config, data, out = job
    corrupt = sorted((data / f"ds={DATES[1]}").glob("*.parquet"))[0]
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # a truncated upload
    proc = score(config, "2031-01-01", DATES[1], "2031-01-02")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "input problems:" in proc.stderr
    for part in ("ds=2031-01-01 does not exist", "ds=2031-01-02 does not exist", corrupt.name):
        assert part in proc.stderr, part
    assert not out.exists(), f"a refused run left {sorted(p.name for p in out.rglob('*'))}"


def test_missing_dates_unreadable_files_and_schema_problems_come_out_in_one_report(job):
    # issue 21: the missing columns and wrong types of the readable files came out in a second
    # round, after the missing dates and unreadable files were fixed
    import pyarrow as pa
    import pyarrow.parquet as pq

    config, data, out = job
    first, second, *_ = sorted((data / f"ds={DATES[0]}").glob("*.parquet"))
    pq.write_table(pq.read_table(first).drop_columns(["price"]), first)  # a column missing
    t = pq.read_table(second)
    i = t.schema.get_field_index("position")
    pq.write_table(t.set_column(i, "position", pa.array(["x"] * t.num_rows)), second)  # wrong type
    corrupt = sorted((data / f"ds={DATES[1]}").glob("*.parquet"))[0]
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    proc = score(config, DATES[0], DATES[1], "2031-01-01")
    assert proc.returncode == 2, proc.stderr[-3000:]
    message = proc.stderr.split("error:", 1)[1]
    assert message.count("input problems:") == 1
    missing = "ds=2031-01-01 does not exist"
    for part in (missing, corrupt.name, first.name, "'price'", second.name, "'position'"):
        assert part in message, part
    assert not out.exists(), f"a refused run left {sorted(p.name for p in out.rglob('*'))}"


def test_a_missing_input_root_is_named_as_input_uri(job, tmp_path):
    config, data, out = job
    shutil.rmtree(data)
    proc = score(config, *DATES)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"input.uri {data} does not exist" in proc.stderr
    assert "ds=" not in proc.stderr.split("error:", 1)[1]
    assert not out.exists()
