"""The Delta table helpers on real files and a real Delta table (no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commit.tables import DeltaOutput, check_partitioning, partition_values, run_files
from pipeline.config import StorageConfig, config_from_dict
from pipeline.errors import ConfigError, UserError
from pipeline.storage import resolve


def test_partition_values_from_hive_directories_null_included():
    assert partition_values("ds=2026-10-01/region=eu%20west/part-a.x.parquet") == {
        "ds": "2026-10-01",
        "region": "eu west",
    }
    assert partition_values("ds=2026-10-01/region=__HIVE_DEFAULT_PARTITION__/p.parquet")["region"] is None


def test_a_run_never_claims_the_files_of_a_run_whose_id_it_prefixes(tmp_path):
    d = tmp_path / "ds=2026-10-01"
    d.mkdir()
    for name in (
        "part-a.1-000000-0.parquet",
        "part-a-b.1-000000-0.parquet",
        "part-a-20261001T000000Z-x.parquet",
    ):
        pq.write_table(pa.table({"k": [1, 2]}), d / name)
    mine = run_files(resolve(str(tmp_path)), "ds", "2026-10-01", "a")
    assert [f.path for f in mine] == ["ds=2026-10-01/part-a.1-000000-0.parquet"]


def test_a_table_partitioned_otherwise_is_refused(tmp_path):
    out = DeltaOutput(resolve(str(tmp_path / "t")), StorageConfig(), ["ds"])
    table = out.open_or_create(pa.schema([("k", pa.int64()), ("ds", pa.string())]))
    check_partitioning(table, ["ds"])
    with pytest.raises(UserError, match=r"partitioned by \['ds'\], but output.partition_columns is"):
        check_partitioning(table, ["ds", "region"])


def test_input_inside_the_output_is_refused():
    raw = {
        "name": "j",
        "input": {"uri": "s3://b/preds/raw"},
        "model": {"uri": "/m"},
        "output": {"uri": "s3://b/preds/", "key_columns": ["k"]},
    }
    with pytest.raises(ConfigError, match="is inside output.uri"):
        config_from_dict(raw)
