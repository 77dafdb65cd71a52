"""Stats in the written files' footers (no Ray: the fallback reads run inline): each file carries
the key fingerprint and score profile of its own rows, the commit reads footers only, and every
guarantee of the key check holds with them: a duplicated block hiding a lost one, a task that
wrote its rows twice, a lost file, a file changed after it was written, stats that lie."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.commit.partitions as partitions
from models.scoreprofile import merge, partial_of
from pipeline.commit.partitions import CommitPolicy, RunIdentity, commit_partitions
from pipeline.commit.tables import HIVE_NULL, DeltaOutput, OutputTables, run_files
from pipeline.config import OutputConfig, StorageConfig
from pipeline.errors import CommitError
from pipeline.filestats import STATS_KEY, ReadKeys, file_stats, stats_from_footer, write_parquet
from pipeline.keys import _file_fingerprint, fingerprint_of
from pipeline.quality.profiles import profile_partitions
from pipeline.stages.deadletter import DeadLetterWriter
from pipeline.stages.layout import even_slices, split_by_partition
from pipeline.stages.read import discover
from pipeline.stages.write import PredictionFiles
from pipeline.storage import resolve

DATE = "2026-10-01"
KEYS = ["event_id"]
N = 1000


def _rows(keys) -> pa.Table:
    keys = np.asarray(keys)
    scores = np.random.default_rng(len(keys)).beta(2, 20, len(keys)).astype(np.float32)
    return pa.table({"event_id": pa.array([f"e{k}" for k in keys]), "score": scores})


def _setup(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / f"ds={DATE}").mkdir(parents=True)
    pq.write_table(_rows(range(0, 500)).select(KEYS), inp / f"ds={DATE}" / "a.parquet")
    pq.write_table(_rows(range(500, N)).select(KEYS), inp / f"ds={DATE}" / "b.parquet")
    loc = resolve(str(out))
    tables = OutputTables(
        DeltaOutput(loc, StorageConfig(), ["ds"]),
        DeltaOutput(loc.join("_dead_letter"), StorageConfig(), ["ds"]),
        "ds",
    )
    return discover(resolve(str(inp)), [DATE], "ds"), tables, out


def _path(out, name: str):
    d = out / f"ds={DATE}"
    d.mkdir(parents=True, exist_ok=True)
    return str(d / f"part-run-1.{name}.parquet")


def _write(out, name: str, rows: pa.Table) -> None:
    """A file as the write stage writes it: the stats of its rows in its footer."""
    write_parquet(resolve(str(out)).fs, _path(out, name), rows, KEYS, ["score"])


def _write_claiming(out, name: str, rows: pa.Table, claimed: pa.Table) -> None:
    """A file holding `rows` whose footer claims the stats of `claimed`."""
    stats = json.dumps(file_stats(claimed, KEYS, "score"))
    with pq.ParquetWriter(_path(out, name), rows.schema) as w:
        w.write_table(rows)
        w.add_key_value_metadata({STATS_KEY: stats})


def _commit(plan, tables):
    return commit_partitions(tables, plan, RunIdentity("run-1", "t", "v", "sha", "cfg"), CommitPolicy(KEYS))


@pytest.fixture
def rows_read(monkeypatch) -> list[str]:
    """The written files the key check read rows of (inputs aside)."""
    read: list[str] = []
    real = partitions.fingerprint_files

    def recording(fs, paths, key_columns):
        read.extend(p for p in paths if "/out/" in p)
        return real(fs, paths, key_columns)

    monkeypatch.setattr(partitions, "fingerprint_files", recording)
    return read


def test_a_files_footer_holds_the_fingerprint_and_profile_of_its_rows(tmp_path):
    rows = _rows(range(300))
    _write(tmp_path, "x", rows)
    path = _path(tmp_path, "x")
    stats = stats_from_footer(pq.read_metadata(path))
    assert stats is not None and stats.rows == 300
    fs = resolve(str(tmp_path)).fs
    assert stats.fingerprint_for(KEYS) == fingerprint_of(pq.read_table(path), KEYS)
    assert (stats.fingerprint.rows, stats.fingerprint.s1, stats.fingerprint.s2) == _file_fingerprint(
        fs, path, KEYS
    )
    assert stats.partial_for("score") == partial_of(pq.read_table(path).column("score").to_numpy())
    # other key columns or another score column: not these stats
    assert stats.fingerprint_for(["event_id", "user_id"]) is None and stats.partial_for("p") is None
    # the stats are in the footer only: a reader's schema does not carry them into what it writes
    assert not (pq.read_table(path).schema.metadata or {}).get(STATS_KEY)


def test_the_commit_reads_footers_only_and_passes_honest_files(tmp_path, rows_read):
    plan, tables, out = _setup(tmp_path)
    _write(out, "a", _rows(range(0, 700)))
    _write(out, "b", _rows(range(700, N)))
    (c,) = _commit(plan, tables)
    assert c.output_rows == N and c.version is not None
    assert rows_read == []
    profile = profile_partitions(tables.location, "ds", [DATE], "score", "run-1")[DATE]["score"]
    full = pa.concat_tables([_rows(range(0, 700)), _rows(range(700, N))]).column("score").to_numpy()
    assert profile["count"] == N and profile["mean"] == pytest.approx(float(full.astype(np.float64).mean()))


def test_a_duplicated_block_hiding_a_lost_one_fails_from_the_footers(tmp_path, rows_read):
    plan, tables, out = _setup(tmp_path)
    _write(out, "a", _rows(range(0, 500)))
    _write(out, "b", _rows(range(0, 500)))  # the first block again; rows 500..999 lost
    with pytest.raises(CommitError, match="keys differ"):
        _commit(plan, tables)
    assert rows_read == [] and not (out / "_delta_log").exists()


def test_a_task_that_wrote_its_rows_twice_fails(tmp_path):
    plan, tables, out = _setup(tmp_path)
    _write(out, "a", _rows(range(0, N)))
    _write(out, "a-retry", _rows(range(0, N)))  # a retried task's copy under another name
    with pytest.raises(CommitError, match=f"{N} input rows but {2 * N} output"):
        _commit(plan, tables)


def test_a_lost_file_fails(tmp_path):
    plan, tables, out = _setup(tmp_path)
    _write(out, "a", _rows(range(0, 600)))
    _write(out, "b", _rows(range(600, N)))
    (out / f"ds={DATE}" / "part-run-1.b.parquet").unlink()
    with pytest.raises(CommitError, match=f"{N} input rows but 600 output"):
        _commit(plan, tables)


def test_a_file_rewritten_after_it_was_written_is_read_not_trusted(tmp_path, rows_read):
    """Rewritten by another tool (read, changed, written back): its stats do not survive, so the
    commit reads its rows, and finds the change."""
    plan, tables, out = _setup(tmp_path)
    _write(out, "a", _rows(range(0, 500)))
    _write(out, "b", _rows(range(500, N)))
    path = _path(out, "b")
    t = pq.read_table(path)
    t = t.set_column(0, "event_id", pa.array(["e0"] * t.num_rows))  # same count, other keys
    pq.write_table(t, path)
    with pytest.raises(CommitError, match="keys differ"):
        _commit(plan, tables)
    assert rows_read == [path]


def test_footer_stats_that_disagree_with_the_files_row_count_are_not_used(tmp_path, rows_read):
    """Stats that lie: each file claims the stats of rows it does not hold, and together they add
    up to the honest date. The row count in each footer gives them away; the rows are read."""
    plan, tables, out = _setup(tmp_path)
    honest_a, honest_b = _rows(range(0, 600)), _rows(range(600, N))
    _write_claiming(out, "a", _rows(range(0, 400)), claimed=honest_a)  # 400 rows, claims 600
    _write_claiming(out, "b", _rows(range(0, 600)), claimed=honest_b)  # 600 rows, claims 400
    with pytest.raises(CommitError, match="keys differ"):
        _commit(plan, tables)
    assert sorted(rows_read) == [_path(out, "a"), _path(out, "b")]


def test_files_without_stats_are_read_beside_files_with(tmp_path, rows_read):
    """Files written by an older version (no stats) still reconcile, read as before."""
    plan, tables, out = _setup(tmp_path)
    _write(out, "a", _rows(range(0, 500)))
    pq.write_table(_rows(range(500, N)), _path(out, "old"))
    (c,) = _commit(plan, tables)
    assert c.output_rows == N and rows_read == [_path(out, "old")]
    profile = profile_partitions(tables.location, "ds", [DATE], "score", "run-1")[DATE]["score"]
    assert profile["count"] == N


def test_dead_letter_files_carry_their_key_fingerprint(tmp_path):
    root = resolve(str(tmp_path / "dl"))
    writer = DeadLetterWriter(root, "ds", KEYS, "run-1")
    rows = pa.table({"event_id": ["e1", None, "e3"], "ds": [DATE] * 3})
    assert writer.write(rows, np.array(["r"] * 3)) == 3
    (f,) = run_files(root, "ds", DATE, "run-1", kind="dl")
    assert f.stats is not None and f.stats.partials == {}
    assert f.stats.fingerprint_for(KEYS) == fingerprint_of(rows, KEYS)


def test_files_are_split_by_partition_and_evenly_to_the_target():
    assert even_slices(5, 2) == [(0, 2), (2, 1), (3, 2)]
    assert even_slices(2400, 2000) == [(0, 1200), (1200, 1200)]
    assert even_slices(2000, 2000) == [(0, 2000)]
    t = pa.table({"k": [1, 2, 3, 4], "ds": ["b", "a", None, "a"]})
    parts = split_by_partition(t, ["ds"])
    assert [(d, p.column("k").to_pylist()) for d, p in parts] == [
        ("ds=a", [2, 4]),
        ("ds=b", [1]),
        (f"ds={HIVE_NULL}", [3]),
    ]


def test_the_write_stage_names_its_files_and_puts_stats_in_them(tmp_path):
    out = OutputConfig(uri=str(tmp_path), key_columns=KEYS, target_rows_per_file=2000)
    sink = PredictionFiles(resolve(str(tmp_path)), out, "run-1")
    assert sink.min_rows_per_write == 2000  # Ray Data collects blocks up to this before a write
    d1, d2 = _rows(range(0, 2500)), _rows(range(2500, 2800))
    blocks = [
        d1.slice(0, 1000).append_column("ds", pa.array([DATE] * 1000)),
        d2.append_column("ds", pa.array(["2026-10-02"] * 300)),
        d1.slice(1000).append_column("ds", pa.array([DATE] * 1500)),
    ]
    sink.write(blocks, SimpleNamespace(kwargs={"write_uuid": "u1"}, task_idx=3))
    files = {p.relative_to(tmp_path).as_posix(): pq.read_metadata(p) for p in tmp_path.rglob("*.parquet")}
    assert {k: m.num_rows for k, m in files.items()} == {
        f"ds={DATE}/part-run-1.u1-000003-0.parquet": 1250,
        f"ds={DATE}/part-run-1.u1-000003-1.parquet": 1250,
        "ds=2026-10-02/part-run-1.u1-000003-2.parquet": 300,
    }
    for m in files.values():
        assert stats_from_footer(m) is not None and "ds" not in m.schema.names
    got = run_files(resolve(str(tmp_path)), "ds", DATE, "run-1")
    assert sum((f.stats.fingerprint for f in got), start=partitions.Fingerprint()) == fingerprint_of(d1, KEYS)
    assert merge([f.stats.partial_for("score") for f in got])["count"] == 2500


def _read_keys(tmp_path) -> ReadKeys:
    return ReadKeys(resolve(str(tmp_path / "out" / "_runs" / "run-1" / "input_keys")), KEYS, "ds")


def _read(path: str, rows: pa.Table, blocks: int = 2):
    """What a read task yields for one input file: its rows in blocks, with the partition column."""
    rows = rows.select(KEYS).append_column("ds", pa.array([DATE] * rows.num_rows))
    step = -(-rows.num_rows // blocks)
    return [rows.slice(i, step) for i in range(0, rows.num_rows, step)]


def _plan_files(plan) -> dict[str, int]:
    return {f.path: f.rows for f in plan.partitions[0].files}


def test_read_tasks_record_the_inputs_fingerprint_and_a_retry_counts_once(tmp_path):
    plan, _, _ = _setup(tmp_path)
    keys = _read_keys(tmp_path)
    a, b = (f.path for f in plan.partitions[0].files)
    blocks = _read(a, _rows(range(0, 500)))
    assert list(keys.record([a], iter(blocks))) == blocks  # the rows pass through unchanged
    list(keys.record([a], iter(_read(a, _rows(range(0, 500)), blocks=3))))  # the task, retried
    list(keys.record([b], iter(_read(b, _rows(range(500, N))))))
    fp, unread = keys.fingerprint(DATE, _plan_files(plan))
    assert unread == [] and fp == fingerprint_of(_rows(range(N)), KEYS)


def test_a_read_that_did_not_finish_records_nothing_and_its_file_is_read(tmp_path):
    plan, _, _ = _setup(tmp_path)
    keys = _read_keys(tmp_path)
    a, b = (f.path for f in plan.partitions[0].files)
    stream = keys.record([a], iter(_read(a, _rows(range(0, 500)))))
    next(stream)  # the task died after its first block
    list(keys.record([b], iter(_read(b, _rows(range(500, N))))))
    fp, unread = keys.fingerprint(DATE, _plan_files(plan))
    assert unread == [a] and fp == fingerprint_of(_rows(range(500, N)), KEYS)


def test_a_record_is_used_only_for_the_files_and_rows_it_names(tmp_path):
    plan, _, _ = _setup(tmp_path)
    keys = _read_keys(tmp_path)
    a, b = (f.path for f in plan.partitions[0].files)
    list(keys.record([a], iter(_read(a, _rows(range(0, 400))))))  # 400 rows read, 500 planned
    list(keys.record([b, "/elsewhere/c.parquet"], iter(_read(b, _rows(range(500, N))))))  # an unplanned file
    assert keys.fingerprint(DATE, _plan_files(plan)) == (partitions.Fingerprint(), [a, b])
    # blocks of two dates in one read task: nothing recorded, its files are read
    two = _read(a, _rows(range(0, 500)))
    two[1] = two[1].set_column(1, "ds", pa.array(["2026-10-02"] * two[1].num_rows))
    list(_read_keys(tmp_path / "x").record([a], iter(two)))
    assert not (tmp_path / "x" / "out" / "_runs").exists()


def test_row_group_ranges_of_a_file_count_as_its_record_only_when_they_tile_it(tmp_path):
    """A big file split over read tasks (row groups 0-2 and 2-4 of 4): its records stand for the
    file when their ranges cover its row groups end to end once (a retried range counts once);
    with a range missing or overlapping another, the file is read at commit."""
    plan, _, _ = _setup(tmp_path)
    a, b = (f.path for f in plan.partitions[0].files)

    def recorded(tmp, ranges: list[tuple[int, int, int, range]]):
        keys = _read_keys(tmp)
        for start, stop, of, ids in ranges:
            list(keys.record([a], iter(_read(a, _rows(ids))), (start, stop, of)))
        list(keys.record([b], iter(_read(b, _rows(range(500, N))))))
        return keys.fingerprint(DATE, _plan_files(plan))

    whole = [(0, 2, 4, range(0, 200)), (2, 4, 4, range(200, 500)), (2, 4, 4, range(200, 500))]
    fp, unread = recorded(tmp_path / "whole", whole)
    assert unread == [] and fp == fingerprint_of(_rows(range(N)), KEYS)
    gap = [(0, 2, 4, range(0, 200)), (3, 4, 4, range(350, 500))]
    assert recorded(tmp_path / "gap", gap)[1] == [a]
    overlap = [(0, 2, 4, range(0, 200)), (1, 4, 4, range(100, 400))]
    assert recorded(tmp_path / "overlap", overlap)[1] == [a]
    short = [(0, 2, 4, range(0, 200)), (2, 4, 4, range(200, 450))]  # 450 rows read, 500 planned
    assert recorded(tmp_path / "short", short)[1] == [a]


def test_the_commit_reconciles_recorded_inputs_with_the_footers_and_reads_nothing(tmp_path, rows_read):
    plan, tables, out = _setup(tmp_path)
    keys = _read_keys(tmp_path)
    a, b = (f.path for f in plan.partitions[0].files)
    list(keys.record([a], iter(_read(a, _rows(range(0, 500))))))
    list(keys.record([b], iter(_read(b, _rows(range(500, N))))))
    policy = CommitPolicy(KEYS, read_keys=keys)
    run = RunIdentity("run-1", "t", "v", "sha", "cfg")
    _write(out, "a", _rows(range(0, 500)))
    _write(out, "b", _rows(range(0, 500)))  # a duplicated block hiding a lost one
    with pytest.raises(CommitError, match="keys differ"):
        commit_partitions(tables, plan, run, policy)
    _write(out, "b", _rows(range(500, N)))  # the honest output
    (c,) = commit_partitions(tables, plan, run, policy)
    assert c.output_rows == N and rows_read == []


def test_without_records_the_input_is_read(tmp_path, monkeypatch):
    plan, tables, out = _setup(tmp_path)
    read: list[str] = []
    real = partitions.fingerprint_files
    monkeypatch.setattr(partitions, "fingerprint_files", lambda fs, p, k: read.extend(p) or real(fs, p, k))
    _write(out, "a", _rows(range(0, N)))
    commit_partitions(
        tables,
        plan,
        RunIdentity("run-1", "t", "v", "sha", "cfg"),
        CommitPolicy(KEYS, read_keys=_read_keys(tmp_path)),
    )
    assert sorted(read) == sorted(_plan_files(plan))


@pytest.mark.parametrize("constant", [True, False])
def test_run_constant_columns_are_written_as_arrow_writes_them_and_read_back_as_text(tmp_path, constant):
    """model_version and run_id go to the encoder as a dictionary when they hold one value: the
    file reads back exactly as the table (text columns, an embedding's fixed size, the values),
    with the schema metadata pyarrow itself stores, and the columns still dictionary-encoded."""
    import pyarrow.fs as pafs

    n = 5000
    run = pa.repeat(pa.scalar("run-1"), n) if constant else pa.array([f"run-{i % 3}" for i in range(n)])
    table = pa.table(
        {
            "id": pa.array(np.arange(n)),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(2 * n, dtype=np.float32)), 2),
            "model_version": pa.repeat(pa.scalar("7"), n),
            "run_id": run,
        }
    ).replace_schema_metadata({"origin": "test"})
    path = str(tmp_path / "f.parquet")
    write_parquet(pafs.LocalFileSystem(), path, table, ["id"], [])
    assert pq.read_table(path).equals(table)
    md = pq.ParquetFile(path).metadata
    pq.write_table(table, str(tmp_path / "plain.parquet"))
    plain = pq.ParquetFile(str(tmp_path / "plain.parquet")).metadata
    for key in (b"ARROW:schema", b"origin"):
        assert md.metadata[key] == plain.metadata[key]
    for i in (2, 3):
        column = md.row_group(0).column(i)
        assert "RLE_DICTIONARY" in column.encodings and column.statistics.has_min_max
    assert stats_from_footer(md).rows == n
