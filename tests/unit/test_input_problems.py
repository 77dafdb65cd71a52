"""Every input problem of a date range in one report (issue 21: missing columns and wrong types
came out in a second round, after the missing dates and unreadable files were fixed): `survey`
returns the missing dates and unreadable files beside the plan of the readable files, and
`check_schemas` reports them with the readable files' schema problems."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.features import CategoricalFeature, DenseFeature, FeatureSpec
from pipeline.errors import InputError, exit_code_of
from pipeline.stages.read import discover, survey
from pipeline.stages.validate import ColumnRequirements, check_schemas
from pipeline.storage import resolve

SPEC = FeatureSpec(categorical=[CategoricalFeature("hour", 24, "integer")], dense=[DenseFeature("price")])
REQ = ColumnRequirements.for_job(["event_id"], SPEC, None)


def _file(tmp_path, date: str, name: str, **columns) -> None:
    d = tmp_path / f"ds={date}"
    d.mkdir(exist_ok=True)
    pq.write_table(pa.table({"event_id": [1, 2], **columns}), d / name)


@pytest.fixture
def range_with_every_problem(tmp_path):
    """2026-11-24 fine; 11-25 missing; 11-26 a file without `price` and one whose `price` is text;
    11-27 an unreadable file beside a fine one."""
    _file(tmp_path, "2026-11-24", "a.parquet", hour=[1, 2], price=[1.0, 2.0])
    _file(tmp_path, "2026-11-26", "nocol.parquet", hour=[1, 2])
    _file(tmp_path, "2026-11-26", "text.parquet", hour=[1, 2], price=["a", "b"])
    _file(tmp_path, "2026-11-27", "a.parquet", hour=[1, 2], price=[1.0, 2.0])
    (tmp_path / "ds=2026-11-27" / "corrupt.parquet").write_bytes(b"not parquet")
    return resolve(str(tmp_path)), [f"2026-11-{d}" for d in range(24, 28)]


def test_every_problem_of_the_range_comes_out_in_one_report(range_with_every_problem):
    root, dates = range_with_every_problem
    plan, problems = survey(root, dates)
    assert len(problems) == 2  # the missing date and the unreadable file, not raised yet
    assert "corrupt.parquet" not in str(plan.paths)  # left out: the schema check reads the others
    with pytest.raises(InputError) as e:
        check_schemas(plan, REQ, earlier=problems)
    msg = str(e.value)
    assert msg.startswith("input problems:\n")
    for part in (
        "ds=2026-11-25 does not exist",
        "corrupt.parquet",
        "nocol.parquet",
        "missing columns ['price']",
    ):
        assert part in msg, part
    assert "text.parquet: column 'price' has type string" in msg
    assert exit_code_of(e.value) == 2


def test_discover_alone_still_raises_the_missing_dates_and_unreadable_files(range_with_every_problem):
    root, dates = range_with_every_problem
    with pytest.raises(InputError, match=r"(?s)input problems:.*2026-11-25 does not exist.*corrupt"):
        discover(root, dates)


def test_schema_problems_alone_keep_their_header(tmp_path):
    _file(tmp_path, "2026-11-26", "nocol.parquet", hour=[1, 2])
    plan, problems = survey(resolve(str(tmp_path)), ["2026-11-26"])
    assert problems == []
    with pytest.raises(InputError, match=r"^input schema check failed:\n  .*nocol.parquet: missing"):
        check_schemas(plan, REQ, earlier=problems)


def test_one_missing_date_alone_is_reported_on_its_own(tmp_path):
    _file(tmp_path, "2026-11-24", "a.parquet", hour=[1, 2], price=[1.0, 2.0])
    plan, problems = survey(resolve(str(tmp_path)), ["2026-11-24", "2026-11-25"])
    with pytest.raises(InputError, match=r"^input partition \S+ds=2026-11-25 does not exist$"):
        check_schemas(plan, REQ, earlier=problems)


def test_skip_mode_still_leaves_the_bad_files_out(range_with_every_problem):
    root, dates = range_with_every_problem
    plan, problems = survey(root, dates, on_bad_file="skip")
    assert problems == []
    check_schemas(plan, REQ, "skip")
    kept = sorted(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in plan.paths)
    assert kept == ["ds=2026-11-24/a.parquet", "ds=2026-11-27/a.parquet"]
    assert len(plan.skipped) == 5  # a missing date, the corrupt file, two bad schemas, 11-26 emptied
