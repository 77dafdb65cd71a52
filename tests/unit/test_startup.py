"""Start-up measurement and the planned read: the clock behind `timings_s.first_batch_s`, the
progress counter's first-batch times, and the read stage's Parquet source (no Ray started)."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.reporting.progress import _Counter
from pipeline.run import clock
from pipeline.stages.read import PlannedParquet, discover
from pipeline.storage import resolve


def test_process_start_is_in_the_past_and_after_boot():
    started = clock.process_started_at()
    assert time.time() - 3600 < started <= time.time()


def test_the_process_origin_is_taken_once_then_runs_count_from_their_call():
    clock.count_from_process_start()
    first = clock.take_origin()
    assert first <= time.time()
    later = clock.take_origin()  # a second run in the same process (a backfill's next run)
    assert later >= first and abs(later - time.time()) < 1.0


def test_a_library_call_counts_from_the_call():
    clock.take_origin()  # nothing pending
    assert abs(clock.take_origin() - time.time()) < 1.0


def test_counter_keeps_the_earliest_worker_time_of_each_stage():
    c = _Counter()
    c.add("scored", 10, at=105.0)
    c.add("scored", 10, at=101.0)  # sent earlier by another worker, arrived later
    c.add("read", 5)
    snap = c.snapshot()
    assert snap["rows"] == {"scored": 20, "read": 5}
    assert snap["first_at"] == {"scored": 101.0}
    assert clock.seconds_to_first(snap, "scored", origin=100.0) == 1.0
    assert clock.seconds_to_first(snap, "read", origin=100.0) is None


def _write(path, table, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kw)


def test_planned_read_adds_the_partition_column_and_keeps_a_stored_one(tmp_path):
    rows = pa.table({"k": pa.array(range(10), pa.int64()), "x": pa.array([0.5] * 10), "y": ["a"] * 10})
    _write(tmp_path / "ds=2026-01-01" / "a.parquet", rows, row_group_size=4)
    _write(tmp_path / "ds=2026-01-02" / "b.parquet", rows.append_column("ds", pa.array(["2026-01-02"] * 10)))
    plan = discover(resolve(str(tmp_path)), ["2026-01-01", "2026-01-02"])
    src = PlannedParquet(plan, ["k", "x", "ds"])
    (fa, da), (fb, db) = src.files
    blocks = list(src.read_file(fa, da))
    assert len(blocks) == 1 and blocks[0].num_rows == 10  # three row groups, one block
    assert blocks[0].column_names == ["k", "x", "ds"]
    assert blocks[0].column("ds").to_pylist() == ["2026-01-01"] * 10
    assert blocks[0].schema == src.schema_of(fa)
    stored = list(src.read_file(fb, db))[0]
    assert stored.column("ds").to_pylist() == ["2026-01-02"] * 10
    assert stored.schema == src.schema_of(fb)


def test_planned_read_splits_large_files_at_row_groups_and_skips_empty_ones(tmp_path):
    rows = pa.table({"k": pa.array(range(1000), pa.int64())})
    _write(tmp_path / "ds=2026-01-01" / "a.parquet", rows, row_group_size=100)
    _write(tmp_path / "ds=2026-01-01" / "empty.parquet", rows.slice(0, 0))
    plan = discover(resolve(str(tmp_path)), ["2026-01-01"])
    src = PlannedParquet(plan, ["k", "ds"])
    (fa, d), (fe, _) = src.files
    blocks = list(src.read_file(fa, d, max_block_bytes=2000))  # ~800 bytes per row group
    assert len(blocks) > 1 and all(b.num_rows % 100 == 0 for b in blocks)
    assert pa.concat_tables(blocks).column("k").to_pylist() == list(range(1000))
    assert list(src.read_file(fe, d)) == []


def test_a_first_block_of_a_few_rows_then_the_rest_of_the_file(tmp_path):
    """`first_rows`: what a replica reads while its model loads (pipeline/run/replicas.py)."""
    rows = pa.table({"k": pa.array(range(1000), pa.int64()), "s": [f"v{i}" for i in range(1000)]})
    _write(tmp_path / "ds=2026-01-01" / "a.parquet", rows, row_group_size=400)
    plan = discover(resolve(str(tmp_path)), ["2026-01-01"])
    src = PlannedParquet(plan, ["k", "s", "ds"])
    ((f, d),) = src.files
    whole = list(src.read_file(f, d))
    blocks = list(src.read_file(f, d, first_rows=64))
    assert [b.num_rows for b in blocks] == [64, 936]  # the rest of its row group joins the next ones
    assert pa.concat_tables(blocks).equals(pa.concat_tables(whole))
    assert all(b.schema == src.schema_of(f) for b in blocks)
    assert [b.num_rows for b in src.read_file(f, d, first_rows=5000)] == [1000]  # no smaller: as before
    split = list(src.read_file(f, d, groups=range(1, 3), first_rows=64))  # a task's row groups
    assert [b.num_rows for b in split] == [64, 536]
    assert pa.concat_tables(split).column("k").to_pylist() == list(range(400, 1000))


def test_the_rest_of_the_first_row_group_is_decoded_only_after_the_first_block(tmp_path):
    """The first block is yielded before the rest of its row group is decoded: the replica's
    first forward pass waits for a batch, not for the file (pyarrow's pool shows what is held)."""
    n = 400_000
    # a few distinct values: small pages on disk (the reader fetches them whole), 6.4 MB decoded
    rows = pa.table({"k": pa.array([i % 100 for i in range(n)], pa.int64()), "x": pa.array([0.5] * n)})
    _write(tmp_path / "ds=2026-01-01" / "a.parquet", rows, row_group_size=n)
    plan = discover(resolve(str(tmp_path)), ["2026-01-01"])
    src = PlannedParquet(plan, ["k", "x", "ds"])
    ((f, d),) = src.files
    before = pa.total_allocated_bytes()
    blocks = src.read_file(f, d, first_rows=1000)
    head = next(blocks)
    held = pa.total_allocated_bytes() - before
    assert head.num_rows == 1000 and held < rows.nbytes // 4, held  # not yet decoded
    rest = next(blocks)
    assert rest.num_rows == n - 1000 and pa.total_allocated_bytes() - before > rows.nbytes // 2


def test_a_first_block_from_a_damaged_file_names_it(tmp_path):
    import pytest

    from pipeline.errors import InputError

    rows = pa.table({"k": pa.array(range(1000), pa.int64())})
    path = tmp_path / "ds=2026-01-01" / "a.parquet"
    _write(path, rows, row_group_size=1000)
    plan = discover(resolve(str(tmp_path)), ["2026-01-01"])
    data = bytearray(path.read_bytes())
    data[8:200] = b"\xff" * 192  # the pages, behind a good footer
    path.write_bytes(bytes(data))
    src = PlannedParquet(plan, ["k", "ds"])
    ((f, d),) = src.files
    with pytest.raises(InputError, match="a.parquet: not a readable Parquet file"):
        list(src.read_file(f, d, first_rows=64))


def test_a_big_file_is_split_by_row_groups_when_there_are_fewer_files_than_cpus(tmp_path):
    """12 row groups of 100 rows and a one-row-group file of 300: with 8 tasks wanted, the big
    file (4/5 of the rows) gets 6 tasks of whole row groups that cover it once, in order; the
    small one stays whole. With one task wanted, every file is one task; the pieces read back
    exactly the files' rows."""
    _write(tmp_path / "ds=2026-01-01" / "big.parquet", pa.table({"k": range(1200)}), row_group_size=100)
    _write(tmp_path / "ds=2026-01-01" / "small.parquet", pa.table({"k": range(1200, 1500)}))
    plan = discover(resolve(str(tmp_path)), ["2026-01-01"])
    src = PlannedParquet(plan, ["k", "ds"])
    tasks = src.read_tasks(8)
    big = [g for f, _, g in tasks if f.path.endswith("big.parquet")]
    assert [(g.start, g.stop) for g in big] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    assert [g for f, _, g in tasks if f.path.endswith("small.parquet")] == [None]  # the whole file
    assert [g for _, _, g in src.read_tasks(1)] == [None, None]  # no split
    keys = [
        k for f, d, g in tasks for b in src.read_task_blocks(f, d, None, g) for k in b.column("k").to_pylist()
    ]
    assert sorted(keys) == list(range(1500))


def test_each_read_task_passes_its_blocks_through_read_keys(tmp_path):
    rows = pa.table({"k": pa.array(range(10), pa.int64())})
    _write(tmp_path / "ds=2026-01-01" / "a.parquet", rows)

    class Recorder:
        seen: list = []

        def record(self, files, blocks, row_groups=None):
            for b in blocks:
                self.seen.append((files, b.num_rows, row_groups))
                yield b

    plan = discover(resolve(str(tmp_path)), ["2026-01-01"])
    src = PlannedParquet(plan, ["k", "ds"], read_keys=Recorder())
    ((f, d),) = src.files
    assert [b.num_rows for b in src.read_task_blocks(f, d, None)] == [10]
    assert Recorder.seen == [([f.path], 10, None)]  # the whole file: no row-group range


def test_a_replica_unpickles_its_model_source_without_the_config_models(tmp_path):
    """What a scoring replica imports and unpickles before its first batch leaves out
    pipeline.config (its pydantic models, 30 ms of each replica's start): a fresh interpreter
    imports the replica's module and loads a ModelSource made from a job's config, with an S3
    endpoint, and still has its storage settings."""
    import pickle
    import subprocess
    import sys

    from pipeline.config import ModelConfig, StorageConfig
    from pipeline.stages.predict import ModelSource

    storage = StorageConfig(endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    source = ModelSource.from_model(ModelConfig(uri="s3://bucket/model"), storage)
    blob = tmp_path / "source.pickle"
    blob.write_bytes(pickle.dumps(source))
    child = (
        "import pickle, sys; import pipeline.run.replicas; "
        f"s = pickle.loads(open({str(blob)!r}, 'rb').read()); "
        "print(s.storage.endpoint_url, s.storage.region, 'pipeline.config' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["http://127.0.0.1:9", "eu-west-1", "False"]
