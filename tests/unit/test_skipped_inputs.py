"""A file left out with input.on_bad_file=skip: its path is recorded once, beside the reason (the
skip warning and the report's skipped list printed it twice)."""

from __future__ import annotations

from jobs.synthetic import SyntheticSpec, write_days
from pipeline.stages.read import discover
from pipeline.storage import resolve


def test_a_skipped_file_is_named_once(tmp_path):
    root = resolve(str(tmp_path / "events"))
    write_days(root, ["2026-11-28"], SyntheticSpec(rows_per_day=200, shards_per_day=2))
    bad = sorted((tmp_path / "events" / "ds=2026-11-28").glob("*.parquet"))[0]
    bad.write_bytes(b"not parquet")
    plan = discover(root, ["2026-11-28"], on_bad_file="skip")
    [skipped] = plan.skipped
    assert skipped["uri"].endswith(bad.name)
    assert bad.name not in skipped["reason"]
    assert skipped["reason"].startswith("not a readable Parquet file")
