"""The local runner (ray.runner: local) on odd inputs a real user has: empty and one-row files,
files of many row groups and bigger than a block, many small dates, and a file that breaks in the
middle of a run. Whatever the input, what a Delta reader sees must be every input row exactly once
with the score the model gives when called directly, each date committed in one transaction."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from support import SYNTH, direct_scores, latest_commit, make_config, read_delta, read_input, read_output

import pipeline.run.local as local
from jobs.synthetic import generate_day
from pipeline.commit.streaming import DateCommitter
from pipeline.commit.tables import commits_of_history
from pipeline.errors import InputError
from pipeline.run.score import run_score
from pipeline.stages.read import PlannedParquet

pytestmark = pytest.mark.integration

TARGET = 500


def _rows(date: str, n: int) -> pa.Table:
    """`n` synthetic rows of `date` (event ids `date-0` ... unique within the date)."""
    return generate_day(date, replace(SYNTH, rows_per_day=n))


def _write(data, date: str, name: str, table: pa.Table, **kwargs) -> str:
    d = data / f"ds={date}"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, d / name, compression="zstd", **kwargs)
    return str(d / name)


def _config(data, checkpoints, out, **sections):
    model_uri, _ = checkpoints.entries["safetensors"]
    output = {"target_rows_per_file": TARGET, **sections.pop("output", {})}
    ray = {"runner": "local", **sections.pop("ray", {})}
    return make_config(str(data), model_uri, str(out), output=output, ray=ray, **sections)


def _commits_by_date(out) -> Counter:
    return Counter(c["date"] for c in commits_of_history(DeltaTable(str(out))))


def _file_rows(out, date: str) -> list[int]:
    """Rows of each file the Delta log holds for `date`, sorted."""
    files = [u for u in DeltaTable(str(out)).file_uris() if f"/ds={date}/" in u]
    return sorted(pq.ParquetFile(u).metadata.num_rows for u in files)


def _target_and_one_rest(rows: int) -> list[int]:
    return sorted([TARGET] * (rows // TARGET) + ([rows % TARGET] if rows % TARGET else []))


def _per_unit(sizes: list[int]) -> list[int]:
    """The files of a date whose input files have `sizes` rows (in path order): the local runner
    writes each unit apart so that a rerun can adopt it alone (resume, docs/operations.md):
    consecutive files packed up to the target rows (a bigger file alone), each unit as files of
    the target rows and one rest."""
    units: list[int] = []
    for n in sizes:
        if units and units[-1] + n <= TARGET:
            units[-1] += n
        else:
            units.append(n)
    return sorted(x for u in units for x in _target_and_one_rest(u))


def assert_scored_exactly_once(data, out, date: str, checkpoints) -> None:
    """What a Delta reader sees of `date`: each input row once, with the model's direct score."""
    inp = read_input(str(data), date)
    got = read_output(str(out), date)
    keys = got.column("event_id").to_pylist()
    assert len(keys) == len(set(keys)) == inp.num_rows, f"{date}: lost or duplicated rows"
    assert set(keys) == set(inp.column("event_id").to_pylist())
    model_uri, _ = checkpoints.entries["safetensors"]
    want = direct_scores(model_uri, inp, checkpoints.spec)
    by_key = dict(zip(keys, got.column("score").to_pylist(), strict=True))
    np.testing.assert_allclose(
        [by_key[k] for k in inp.column("event_id").to_pylist()], want, rtol=0, atol=1e-6
    )


def test_empty_and_one_row_files_next_to_normal_ones_and_an_all_empty_date_are_scored_once(
    checkpoints, tmp_path
):
    """A date of two ordinary files, a Parquet file of 0 rows (same schema) and one of a single
    row; the next date ordinary; the last one only an empty file (a day without events). Every
    row once, the model's scores, one commit per date (the empty date's with 0 rows and no
    files), each unit's files of the target rows and one rest."""
    data, out = tmp_path / "events", tmp_path / "preds"
    odd, plain, empty = "2026-10-01", "2026-10-02", "2026-10-03"
    t = _rows(odd, 1801)
    _write(data, odd, "part-0.parquet", t.slice(0, 900))
    _write(data, odd, "part-1.parquet", t.slice(900, 900))
    _write(data, odd, "part-2-one-row.parquet", t.slice(1800, 1))
    _write(data, odd, "part-3-empty.parquet", t.slice(0, 0))
    assert pq.ParquetFile(data / f"ds={odd}" / "part-3-empty.parquet").metadata.num_rows == 0
    _write(data, plain, "part-0.parquet", _rows(plain, 1200))
    _write(data, empty, "part-0-empty.parquet", _rows(empty, 10).slice(0, 0))

    report = run_score(_config(data, checkpoints, out), [odd, plain, empty])

    assert report.pool.runner == "local"
    assert [p.input_files for p in report.partitions] == [4, 1, 1]
    assert [p.output_rows for p in report.partitions] == [1801, 1200, 0]
    assert report.commits.committed == [odd, plain, empty]
    assert _commits_by_date(out) == {odd: 1, plain: 1, empty: 1}
    for d, sizes in ((odd, [900, 900, 1, 0]), (plain, [1200])):
        assert_scored_exactly_once(data, out, d, checkpoints)
        assert _file_rows(out, d) == _per_unit(sizes)
    assert read_delta(str(out), date=empty).num_rows == 0 and _file_rows(out, empty) == []
    assert latest_commit(str(out), empty)["input_rows"] == 0


def test_files_of_many_row_groups_and_bigger_than_a_block_are_read_in_blocks_and_scored_once(
    checkpoints, tmp_path, monkeypatch
):
    """A file of 14 row groups bigger than the block size (made small here, as a file of several
    hundred MB is against the real one), one of 6 row groups and one of a single row group: the
    big file is read in several blocks of whole row groups, blocks cross the output files'
    boundaries, and every row is scored once with the model's score."""
    data, out = tmp_path / "events", tmp_path / "preds"
    date = "2026-10-01"
    t = _rows(date, 3000)
    big = _write(data, date, "big.parquet", t.slice(0, 2100), row_group_size=150)
    several = _write(data, date, "several.parquet", t.slice(2100, 600), row_group_size=100)
    plain = _write(data, date, "plain.parquet", t.slice(2700, 300))
    assert pq.ParquetFile(big).metadata.num_row_groups == 14
    assert pq.ParquetFile(several).metadata.num_row_groups == 6

    # about two of the big file's row groups per block (only the needed columns are read)
    rg_bytes = pq.ParquetFile(big).read_row_group(0).nbytes
    monkeypatch.setattr(local, "BLOCK_BYTES", int(rg_bytes * 1.5))
    blocks: dict[str, list[int]] = {}
    read_file = PlannedParquet.read_file

    def spy(self, f, d, max_block_bytes=None):
        assert max_block_bytes == local.BLOCK_BYTES
        for block in read_file(self, f, d, max_block_bytes):
            blocks.setdefault(f.path, []).append(block.num_rows)
            yield block

    monkeypatch.setattr(PlannedParquet, "read_file", spy)

    report = run_score(_config(data, checkpoints, out), [date])

    assert sum(blocks[big]) == 2100 and len(blocks[big]) >= 3, blocks[big]
    assert all(n % 150 == 0 for n in blocks[big]), f"a block split a row group: {blocks[big]}"
    assert sum(blocks[several]) == 600 and all(n % 100 == 0 for n in blocks[several])
    assert blocks[plain] == [300]
    assert report.partitions[0].output_rows == 3000
    assert _commits_by_date(out) == {date: 1}
    assert_scored_exactly_once(data, out, date, checkpoints)
    assert _file_rows(out, date) == _per_unit([2100, 300, 600])  # big, plain, several


def test_many_small_dates_each_commit_once_with_target_sized_files_and_one_rest(checkpoints, tmp_path):
    """Six dates of 1-3 files, some under the target rows, one exactly the target, files of
    unequal sizes: each date in its own Delta transaction (its own table version), every row
    once with the model's score, files of the target rows and one smaller rest per unit."""
    data, out = tmp_path / "events", tmp_path / "preds"
    layout = {  # date -> rows of each of its files
        "2026-10-01": [700, 400, 101],
        "2026-10-02": [300],
        "2026-10-03": [250, 250],
        "2026-10-04": [999, 1],
        "2026-10-05": [40],
        "2026-10-06": [1100, 7, 394],
    }
    for d, sizes in layout.items():
        t = _rows(d, sum(sizes))
        for i, (offset, n) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)):
            _write(data, d, f"part-{i}.parquet", t.slice(int(offset), n))
    dates = list(layout)

    report = run_score(_config(data, checkpoints, out), dates)

    assert report.commits.committed == dates
    history = commits_of_history(DeltaTable(str(out)))
    assert sorted(c["date"] for c in history) == dates, "a date committed twice, or two in one commit"
    assert len({c["version"] for c in history}) == len(dates)
    for d, sizes in layout.items():
        assert_scored_exactly_once(data, out, d, checkpoints)
        assert _file_rows(out, d) == _per_unit(sizes), d
    assert sum(p.output_rows for p in report.partitions) == sum(map(sum, layout.values()))


def test_a_file_whose_footer_is_unreadable_refuses_the_run_naming_it_before_any_scoring(
    checkpoints, tmp_path
):
    """A truncated file (no valid footer) among good ones of a later date: discovery reads every
    footer first, so the run stops before scoring with an error naming the file, and writes no
    table."""
    data, out = tmp_path / "events", tmp_path / "preds"
    _write(data, "2026-10-01", "part-0.parquet", _rows("2026-10-01", 800))
    t = _rows("2026-10-02", 800)
    _write(data, "2026-10-02", "part-0.parquet", t.slice(0, 400))
    bad = data / "ds=2026-10-02" / "part-1.parquet"
    _write(data, "2026-10-02", "part-1.parquet", t.slice(400, 400))
    bad.write_bytes(bad.read_bytes()[:300])

    with pytest.raises(InputError, match=r"ds=2026-10-02/part-1\.parquet: not a readable Parquet file"):
        run_score(_config(data, checkpoints, out), ["2026-10-01", "2026-10-02"])
    assert not (out / "_delta_log").exists()
    assert not out.exists() or not list(out.rglob("*.parquet"))


def _corrupt_pages(path) -> bytes:
    """The file with its column chunks overwritten and its footer intact: it passes discovery
    (row count and schema from the footer) and fails when its rows are read, as a file with
    damaged pages does. Returns the good bytes."""
    good = path.read_bytes()
    footer = int.from_bytes(good[-8:-4], "little")
    bad = bytearray(good)
    bad[4 : len(good) - 8 - footer] = b"\xab" * (len(good) - 12 - footer)
    path.write_bytes(bytes(bad))
    assert pq.ParquetFile(path).metadata.num_rows > 0, "the footer still reads"
    return good


def _rows_on_disk(out, date: str) -> int:
    """Rows of the complete Parquet files under the date's directory, committed or not."""
    rows = 0
    for path in (out / f"ds={date}").glob("*.parquet"):
        with contextlib.suppress(pa.ArrowInvalid, OSError):  # a file being written: not yet
            rows += pq.ParquetFile(path).metadata.num_rows
    return rows


def test_a_file_that_breaks_mid_run_fails_naming_it_and_a_rerun_after_the_fix_is_exact(
    checkpoints, tmp_path, monkeypatch
):
    """Three dates on two scoring threads; a file of the second date gets damaged pages behind a
    good footer once the run is under way, so it fails when a thread reads it, after the first
    date was committed (the thread reaching it waits for that commit, as in a long backfill) and
    while the other thread
    scores the third date. The run fails with an error naming the file; a reader sees the first
    date, exact, and nothing of the others (their files are removed). After the file is fixed, a
    rerun skips the committed date and commits the two others, exact, each once."""
    data, out = tmp_path / "events", tmp_path / "preds"
    d1, d2, d3 = "2026-10-01", "2026-10-02", "2026-10-03"
    for d in (d1, d2, d3):
        t = _rows(d, 1500)
        for i in range(3):
            _write(data, d, f"part-{i}.parquet", t.slice(500 * i, 500))
    broken = data / f"ds={d2}" / "part-1.parquet"
    good = broken.read_bytes()  # damaged only once the run is under way (after its key checks)

    # the committer polls often, and the thread that reaches the broken file waits for d1's commit
    start = DateCommitter.start

    def fast_start(self):
        self.interval_s = 0.05
        return start(self)

    monkeypatch.setattr(DateCommitter, "start", fast_start)
    read_file = PlannedParquet.read_file
    waited = threading.Event()

    def read_after_first_commit(self, f, d, max_block_bytes=None):
        if f.path == str(broken):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                latest_commit(str(out), d1) is not None and _rows_on_disk(out, d3) == 1500
            ):
                time.sleep(0.05)
            if latest_commit(str(out), d1) is not None and _rows_on_disk(out, d3) == 1500:
                waited.set()  # d1 committed, d3 all written but not committable before d2
            _corrupt_pages(broken)
        yield from read_file(self, f, d, max_block_bytes)

    monkeypatch.setattr(PlannedParquet, "read_file", read_after_first_commit)
    cfg = _config(data, checkpoints, out, ray={"num_cpus": 2})

    with pytest.raises(InputError, match=re.escape(f"ds={d2}/part-1.parquet")) as failed:
        run_score(cfg, [d1, d2, d3])
    assert waited.is_set(), "the broken file was read before d1 was committed and d3 written"
    assert "corrupt or truncated" in str(failed.value)

    # a Delta reader sees d1, exact, and nothing of d2 and d3; their files are gone from disk
    assert _commits_by_date(out) == {d1: 1}
    visible = read_delta(str(out))
    assert set(visible.column("ds").to_pylist()) == {d1}
    assert_scored_exactly_once(data, out, d1, checkpoints)
    for d in (d2, d3):
        assert not list((out / f"ds={d}").glob("*.parquet")), f"uncommitted files of {d} left"
    first_run = commits_of_history(DeltaTable(str(out)))[0]["run_id"]

    monkeypatch.undo()  # the rerun as a user runs it
    broken.write_bytes(good)
    report = run_score(_config(data, checkpoints, out), [d1, d2, d3])

    assert report.skipped_committed == [d1], "the committed date is not scored again"
    assert report.commits.committed == [d2, d3]
    history = commits_of_history(DeltaTable(str(out)))
    assert Counter(c["date"] for c in history) == {d1: 1, d2: 1, d3: 1}
    assert {c["date"]: c["run_id"] for c in history} == {d1: first_run, d2: report.run_id, d3: report.run_id}
    for d in (d1, d2, d3):
        assert_scored_exactly_once(data, out, d, checkpoints)
        assert _file_rows(out, d) == _target_and_one_rest(1500)


def test_damaged_pages_fail_a_ray_run_naming_the_file_and_nothing_of_its_date_is_visible(
    ray_cluster, checkpoints, tmp_path
):
    """The Ray runner reads through the same PlannedParquet.read_file in its read tasks: the
    same file, damaged behind a good footer, fails the run with the same InputError naming it
    (the original error reaches the driver, not only Ray Data's wrapper), and a reader sees
    nothing of its date."""
    data, out = tmp_path / "events", tmp_path / "preds"
    d = "2026-10-01"
    t = _rows(d, 1500)
    for i in range(3):
        _write(data, d, f"part-{i}.parquet", t.slice(500 * i, 500))
    _corrupt_pages(data / f"ds={d}" / "part-2.parquet")

    with pytest.raises(InputError, match=re.escape(f"ds={d}/part-2.parquet")) as failed:
        run_score(_config(data, checkpoints, out, ray={"runner": "ray"}), [d])
    assert "corrupt or truncated" in str(failed.value)
    assert not (out / "_delta_log").exists() or _commits_by_date(out) == Counter()
    assert not list((out / f"ds={d}").glob("*.parquet")), "the failed run's files are left"


def test_one_big_file_is_scored_by_every_thread_and_exactly_once(checkpoints, tmp_path, monkeypatch):
    """A date in one file (a pandas or warehouse export): the threads share its slices of
    preprocessing.batch_size rows, so both score it (a thread per file left one CPU idle), and
    every row is still written once, in files of the target rows."""
    from pipeline.stages.predict import FusedScorer

    data, out = tmp_path / "events", tmp_path / "preds"
    d = "2026-10-01"
    _write(data, d, "part-0.parquet", _rows(d, 4000), row_group_size=1000)
    scored_by: Counter = Counter()
    score = FusedScorer.score

    def spy(self, batch, predictor, at=None):
        time.sleep(0.01)  # lets the other thread take the next slice on a loaded machine too
        scored_by[threading.current_thread().name] += batch.num_rows
        return score(self, batch, predictor, at=at)

    monkeypatch.setattr(FusedScorer, "score", spy)
    cfg = _config(data, checkpoints, out, ray={"num_cpus": 2}, preprocessing={"batch_size": 250})
    report = run_score(cfg, [d])

    assert report.pool.max_replicas == 2
    assert len(scored_by) == 2 and sum(scored_by.values()) == 4000, scored_by
    assert_scored_exactly_once(data, out, d, checkpoints)
    assert _file_rows(out, d) == _target_and_one_rest(4000)
