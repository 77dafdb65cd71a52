"""The top-K check's distributed count by group, on Ray: same answer as the local count, and
no deprecation warning (Ray 2.60 deprecates read_parquet's columns=; it reached the terminal)."""

from __future__ import annotations

import warnings

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.commit.groups import duplicate_groups

pytestmark = pytest.mark.integration


def test_duplicate_groups_on_ray_warns_nothing(ray_cluster, tmp_path):
    paths = []
    for i, users in enumerate([[1, 2, 3], [4, 2, 5]]):  # user 2 in two rows
        path = str(tmp_path / f"part-{i}.parquet")
        pq.write_table(pa.table({"user_id": users, "items": [[1]] * 3}), path)
        paths.append(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        found = duplicate_groups(pafs.LocalFileSystem(), paths, ["user_id"])
    assert found == [{"user_id": 2, "rows": 2}]
    ours = [str(w.message) for w in seen if "read_parquet" in str(w.message)]  # not Ray's own
    assert ours == []
