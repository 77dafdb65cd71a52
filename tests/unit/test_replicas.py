"""The actors mode's units (pipeline/run/replicas.py): how input is cut into units, and how a
unit's predictions become files. No Ray here."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.run.replicas import UnitFiles, pack, split_tail
from pipeline.stages.layout import OutputFiles
from pipeline.stages.read import InputFile


def _file(name: str, rows: int, groups: int = 1) -> InputFile:
    return InputFile(
        path=name,
        uri=name,
        size=rows * 10,
        rows=rows,
        schema=pa.schema([("k", pa.int64())]),
        row_groups=groups,
    )


def test_small_files_of_a_date_are_packed_up_to_the_cap_and_dates_never_mix():
    a = [(_file(f"a{i}", 500), "d1", None) for i in range(5)]
    b = [(_file(f"b{i}", 500), "d2", None) for i in range(2)]
    units = pack([*a, *b], cap=1000)
    assert [[p[0].path for p in u] for u in units] == [["a0", "a1"], ["a2", "a3"], ["a4"], ["b0", "b1"]]


def test_a_piece_over_the_cap_is_a_unit_alone_and_row_group_ranges_count_their_share():
    big = _file("big", 10_000, groups=10)
    pieces = [(big, "d", range(0, 5)), (big, "d", range(5, 10)), (_file("s", 100), "d", None)]
    assert [len(u) for u in pack(pieces, cap=4000)] == [1, 1, 1]  # each over the cap or past it
    units = pack(pieces, cap=6000)
    assert [len(u) for u in units] == [1, 2]  # half the row groups are 5,000 rows; + 100 fit
    assert units[1][0][2] == range(5, 10) and units[1][1][0].path == "s"


def test_the_last_units_go_out_in_their_pieces_for_a_short_tail():
    units = pack([(_file(f"a{i}", 500), "d1", None) for i in range(16)], cap=1000)
    assert [len(u) for u in units] == [2] * 8
    split = split_tail(units, replicas=2)
    assert [len(u) for u in split] == [2] * 6 + [1] * 4
    assert [p for u in split for p in u] == [p for u in units for p in u]  # every piece once, in order
    # under 4 units per replica: as packed (most rows would land in small files)
    assert split_tail(units[:7], replicas=2) == units[:7]
    assert split_tail(units, replicas=3) == units
    assert split_tail(units, replicas=0) == units


def _files(tmp_path, target: int) -> OutputFiles:
    return OutputFiles(
        fs=pafs.LocalFileSystem(),
        path=str(tmp_path),
        partition_cols=["ds"],
        target=target,
        key_columns=["k"],
        value_columns=["score"],
        compression="zstd",
        make_dirs=True,
    )


def test_unit_files_write_whole_targets_as_they_fill_and_the_rest_at_close(tmp_path):
    out = UnitFiles(_files(tmp_path, target=1000), "part-r.attempt-000003")
    for i in range(5):  # 5 x 450 rows: whole targets written as soon as they are buffered
        rows = pa.table(
            {
                "k": pa.array(range(i * 450, (i + 1) * 450)),
                "score": pa.array([0.5] * 450, pa.float32()),
                "ds": pa.array(["2026-01-01"] * 450),
            }
        )
        out.add(rows)
    assert out.rows == 2000 and out.count == 2
    out.close()
    files = sorted((tmp_path / "ds=2026-01-01").iterdir())
    assert [f.name for f in files] == [f"part-r.attempt-000003-{i}.parquet" for i in range(3)]
    assert [pq.read_metadata(f).num_rows for f in files] == [1000, 1000, 250]
    keys = pa.concat_tables([pq.read_table(f) for f in files]).column("k").to_pylist()
    assert sorted(keys) == list(range(2250))  # every row once


def test_a_replicas_progress_calls_are_kept_until_drained_and_replayed_once():
    import pickle

    from pipeline.reporting.progress import BufferedCounter, InProcessCounter, replay

    buffered = BufferedCounter()
    buffered.add.remote("read", 10, 1.0)
    buffered.replica.remote("pid-1", {"device": "cpu"})
    buffered.add.remote("read", 5, 2.0)
    driver = InProcessCounter()
    replay(driver, buffered.drain())
    replay(driver, buffered.drain())  # nothing twice
    snap = driver.snapshot.remote()
    assert snap["rows"] == {"read": 15}
    assert snap["first_at"] == {"read": 1.0}
    assert snap["replicas"] == [{"device": "cpu"}]
    # the model's arguments and the preprocessing are unpickled apart in a replica: one buffer
    a, b = pickle.loads(pickle.dumps(buffered)), pickle.loads(pickle.dumps(buffered))
    assert a is b and a is not buffered
    a.add.remote("scored", 3, None)
    assert b.drain() == [("add", ("scored", 3, None))]


def test_a_model_that_fails_to_load_fails_the_first_forward_pass_and_the_units_end():
    from pipeline.run.replicas import _Loading

    started: dict = {}
    loading = _Loading({"no_such_argument": 1}, started)
    for _ in range(2):  # the load's error each time, never a None predictor
        with pytest.raises(TypeError, match="no_such_argument"):
            loading(pa.table({"x": [1]}))
    with pytest.raises(TypeError, match="no_such_argument"):
        loading.wait()
    assert "init_end" in started
    assert loading.imported.is_set() and not loading.loading()  # a unit's read never waits for it


def _scored(keys: range) -> pa.Table:
    n = len(keys)
    return pa.table(
        {"k": pa.array(keys), "score": pa.array([0.5] * n, pa.float32()), "ds": pa.array(["2026-01-01"] * n)}
    )


def test_a_challengers_own_replica_keeps_the_latest_run_of_a_unit(tmp_path):
    """pipeline/run/ownpool.py: the slices of a unit's first run (its champion replica died) are
    dropped when a later run of the unit starts, even those arriving late; the unit's files hold
    the later run's rows once, under the champion's names."""
    from pipeline.run.ownpool import OwnUnits

    units = OwnUnits(_files(tmp_path, target=1000), "part-r.a-", 256, lambda rows: rows)
    units.add(7, 100, _scored(range(0, 300)))
    units.add(7, 200, _scored(range(0, 500)))  # the unit runs again: its files start over
    units.add(7, 100, _scored(range(300, 600)))  # late, from the first run: dropped
    assert units.close(7, 100) == 0.0 and 7 in units.units
    units.close(7, 200)
    files = sorted((tmp_path / "ds=2026-01-01").iterdir())
    assert [f.name for f in files] == ["part-r.a-000007-0.parquet"]
    assert sorted(pq.read_table(files[0]).column("k").to_pylist()) == list(range(500))


def test_a_challengers_own_replica_that_raised_refuses_what_comes_next(tmp_path):
    from pipeline.run.ownpool import OwnUnits

    def boom(rows: pa.Table) -> pa.Table:
        raise RuntimeError("challenger model raised on purpose")

    units = OwnUnits(_files(tmp_path, target=1000), "part-r.a-", 256, boom)
    with pytest.raises(RuntimeError, match="on purpose"):
        units.add(1, 1, _scored(range(10)))
    with pytest.raises(RuntimeError, match="on purpose"):  # the next unit fails at once
        units.add(2, 1, _scored(range(10)))
    assert not (tmp_path / "ds=2026-01-01").exists()


def test_the_replicas_cpu_per_row_leaves_out_each_replicas_first_unit():
    from pipeline.run.replicas import RECORD_FIELDS, ReplicaRun

    run = ReplicaRun(2)
    base = dict.fromkeys(RECORD_FIELDS, 0.0) | {"notes": "{}", "files": 1}
    for pid, start, rows, cpu in [
        (1, 0.0, 100, 9.0),
        (1, 1.0, 1000, 0.5),
        (2, 0.5, 100, 8.0),
        (2, 2.0, 3000, 1.5),
    ]:
        run.add(
            base
            | {"pid": pid, "start": start, "end": start + 1, "rows_in": rows, "rows_out": rows, "cpu_s": cpu}
        )
    (line,) = run.cpu_lines()
    assert line == "replicas' CPU after their first unit: 2.00 s, 500.000 us per row (4000 rows)"
    assert line in run.stats_text()
    assert ReplicaRun(1).cpu_lines() == []
