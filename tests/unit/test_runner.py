"""Which runner a run gets (ray.runner auto), the local runner's CPUs, and its date files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import OutputConfig, config_from_dict
from pipeline.filestats import stats_from_footer
from pipeline.run.execute import choose_runner, local_cpus, local_pool
from pipeline.run.local import DateFiles
from pipeline.storage import resolve


def _cfg(**sections):
    raw = {
        "name": "t",
        "input": {"uri": "/data/in"},
        "model": {"uri": "/models/m"},
        "output": {"uri": "/data/out", "key_columns": ["event_id"]},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # as on this machine, whatever the host has
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize(
    "sections,running,want,why",
    [
        ({}, False, "local", "one machine and no GPU"),
        ({}, True, "ray", "Ray is initialized in this process"),
        ({"ray": {"address": "ray://head:10001"}}, False, "ray", "a Ray address is given"),
        (
            {"output": {"key_columns": ["user_id", "item_id"], "top_k": {"group_by": ["user_id"], "k": 5}}},
            False,
            "ray",
            "output.top_k",
        ),
        ({"predict": {"mode": "actors"}}, False, "ray", "predict.mode is 'actors'"),
        ({"predict": {"device": "cuda"}}, False, "ray", "wants a GPU"),
        ({"predict": {"num_gpus_per_replica": 1}}, False, "ray", "wants a GPU"),
        ({"ray": {"runner": "ray"}}, False, "ray", "ray.runner is 'ray'"),
        ({"ray": {"runner": "local"}}, True, "local", "ray.runner is 'local'"),
    ],
)
def test_auto_runner(no_gpu, sections, running, want, why):
    runner, reason = choose_runner(_cfg(**sections), running)
    assert runner == want and why in reason


def test_ray_address_in_the_environment_means_ray(no_gpu, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_runner(_cfg(), False)[0] == "ray"


def test_local_pool_one_thread_per_cpu(no_gpu):
    pool = local_pool(_cfg(ray={"num_cpus": 3}))
    assert (pool.runner, pool.mode, pool.max_replicas, pool.torch_threads) == ("local", "fused", 3, 1)
    assert (
        local_pool(
            _cfg(ray={"num_cpus": 4}, predict={"max_replicas": 1, "num_cpus_per_replica": 4})
        ).max_replicas
        == 1
    )
    assert local_cpus(_cfg()) >= 1


def _files(root):
    return sorted(
        (
            p.parent.name,
            pq.ParquetFile(p).metadata.num_rows,
            stats_from_footer(pq.ParquetFile(p).metadata).rows,
        )
        for p in root.rglob("*.parquet")
    )


def _rows(date: str, start: int, n: int) -> pa.Table:
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(start, start + n)],
            "score": pa.array([0.5] * n, pa.float32()),
            "ds": [date] * n,
        }
    )


def test_date_files_write_whole_targets_then_the_rest_of_each_date(tmp_path):
    out = OutputConfig(uri=str(tmp_path), key_columns=["event_id"], target_rows_per_file=5)
    files = DateFiles(resolve(str(tmp_path)), out, "run-1", {"2026-10-01": 2, "2026-10-02": 1})
    files.add("2026-10-01", _rows("2026-10-01", 0, 3))
    assert _files(tmp_path) == []  # under the target: buffered
    files.add("2026-10-01", _rows("2026-10-01", 3, 4))
    files.add("2026-10-02", _rows("2026-10-02", 0, 11))
    assert _files(tmp_path) == [("ds=2026-10-01", 5, 5), ("ds=2026-10-02", 5, 5), ("ds=2026-10-02", 5, 5)]
    files.file_done("2026-10-01")  # the first of its two files: the rest waits
    files.file_done("2026-10-02")  # its only file: the rest is written now
    assert ("ds=2026-10-02", 1, 1) in _files(tmp_path) and len(_files(tmp_path)) == 4
    files.add("2026-10-01", _rows("2026-10-01", 7, 1))
    files.file_done("2026-10-01")
    got = _files(tmp_path)
    assert [n for d, n, _ in got if d == "ds=2026-10-01"] == [3, 5]
    names = [p.name for p in tmp_path.rglob("*.parquet")]
    assert all(n.startswith("part-run-1.local-") for n in names) and len(set(names)) == len(names)
    keys = pq.ParquetDataset(str(tmp_path / "ds=2026-10-01")).read().column("event_id").to_pylist()
    assert sorted(keys) == sorted(f"e{i}" for i in range(8))


def test_buffered_batches_are_compacted_with_their_rows_in_order(tmp_path):
    """Every COMPACT_EVERY batches the buffer becomes one table (no batch's memory held until the
    unit is written): the file has the very rows, in the order they came."""
    from pipeline.run.local import COMPACT_EVERY

    out = OutputConfig(uri=str(tmp_path), key_columns=["event_id"], target_rows_per_file=1000)
    files = DateFiles(resolve(str(tmp_path)), out, "run-1", {"2026-10-01": 1})
    batches = 2 * COMPACT_EVERY + 3
    for b in range(batches):
        files.add("2026-10-01", _rows("2026-10-01", 3 * b, 3))
    assert len(files._buf["2026-10-01"]) == 2 + 3  # two compacted tables, three batches since
    files.file_done("2026-10-01")
    assert _files(tmp_path) == [("ds=2026-10-01", 3 * batches, 3 * batches)]
    keys = pq.ParquetDataset(str(tmp_path / "ds=2026-10-01")).read().column("event_id").to_pylist()
    assert keys == [f"e{i}" for i in range(3 * batches)]
