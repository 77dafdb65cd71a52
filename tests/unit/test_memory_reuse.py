import pyarrow as pa
import pyarrow.compute as pc

from pipeline import constcols
from pipeline.constcols import constant_strings


def test_a_constant_column_is_the_value_in_every_row_as_a_plain_string_column():
    for rows in (0, 1, 5, 1000, 3):  # grows, then slices of what was built
        col = constant_strings("2026-11-01", rows)
        assert col.type == pa.string()
        assert len(col) == rows and col.null_count == 0
        assert col.to_pylist() == ["2026-11-01"] * rows
    assert pc.all(pc.equal(constant_strings("2026-11-01", 70_000), "2026-11-01")).as_py()


def test_slices_of_one_array_serve_the_later_batches():
    first = constant_strings("run-a", 4096)
    again = constant_strings("run-a", 100)
    assert again.buffers()[2].address == first.buffers()[2].address  # no new buffer


def test_building_one_imports_no_pandas():
    """pyarrow imports pandas for a scalar from a Python object: 0.3 s of a fresh replica's
    first block, before its first forward pass (pipeline/constcols.py)."""
    import subprocess
    import sys

    code = (
        "import sys; from pipeline.constcols import constant_strings; "
        "a = constant_strings('2026-11-01', 70_000); a.validate(full=True); "
        "print(a[69_999].as_py(), 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2026-11-01", "False"]


def test_odd_values_too():
    for value in ("", "é-ü", "x" * 1000):
        col = constant_strings(value, 7)
        col.validate(full=True)
        assert col.to_pylist() == [value] * 7 and col.type == pa.string()


def test_only_the_newest_values_are_kept():
    for i in range(constcols.KEEP + 5):
        constant_strings(f"date-{i}", 10)
    assert len(constcols._built) <= constcols.KEEP
    assert f"date-{constcols.KEEP + 4}" in constcols._built


def test_a_column_written_and_read_back_is_the_same_strings(tmp_path):
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array(range(10)), "ds": constant_strings("2026-11-02", 10)})
    pq.write_table(table, tmp_path / "f.parquet")
    assert pq.read_table(tmp_path / "f.parquet").equals(table)


def _pool_in_a_fresh_process(env: dict[str, str]) -> str:
    import os
    import subprocess
    import sys

    code = "from pipeline.memory import reuse_freed_memory; print(reuse_freed_memory())"
    env = {**{k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}, **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_the_driver_takes_jemalloc_unless_the_user_chose_a_pool():
    pa_pools = pa.supported_memory_backends()
    want = "jemalloc" if "jemalloc" in pa_pools else pa.default_memory_pool().backend_name
    assert _pool_in_a_fresh_process({}) == want
    assert _pool_in_a_fresh_process({"ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"
