"""Duplicate keys within a date, found exactly without the keys on the driver (issue 19: 150
repeated keys passed silently with exit 0)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.stages import duplicates
from pipeline.stages.duplicates import REASON, find_duplicates, refuse
from pipeline.stages.read import discover
from pipeline.storage import resolve

D1, D2 = "2026-10-01", "2026-10-02"


def _write(tmp_path, files: dict[str, list[list]]):
    """files: 'DATE/name' -> rows of (event_id, user_id)."""
    for name, rows in files.items():
        date, base = name.split("/")
        d = tmp_path / f"ds={date}"
        d.mkdir(exist_ok=True)
        ids, users = zip(*rows, strict=True) if rows else ((), ())
        t = pa.table({"event_id": pa.array(ids, pa.string()), "user_id": pa.array(users, pa.int64())})
        pq.write_table(t, d / f"{base}.parquet")
    return discover(resolve(str(tmp_path)), sorted({n.split("/")[0] for n in files}), "ds")


def _plan(tmp_path):
    return _write(
        tmp_path,
        {
            f"{D1}/a": [["e1", 1], ["e2", 2], ["e3", 3]],
            f"{D1}/b": [["e1", 1], ["e4", 4], ["e4", 4], ["e4", 5], ["e1", 9]],
            f"{D2}/a": [["e1", 1], ["e9", 9]],  # e1 again, but on another date: not a repeat
        },
    )


def test_keys_that_repeat_within_a_date_are_found_with_their_files(tmp_path):
    found = find_duplicates(_plan(tmp_path), ["event_id", "user_id"])
    assert set(found.dates) == {D1}
    dup = found.dates[D1]
    assert sorted(dup.keys) == [("e1", 1), ("e4", 4)] and dup.rows == 4
    assert [p.rsplit("/", 1)[-1] for p in dup.files[("e1", 1)]] == ["a.parquet", "b.parquet"]
    single = find_duplicates(_plan(tmp_path), ["event_id"])
    assert sorted(single.dates[D1].keys) == [("e1",), ("e4",)] and single.dates[D1].rows == 6


def test_no_repeats_no_dates(tmp_path):
    plan = _write(tmp_path, {f"{D1}/a": [["e1", 1], ["e2", 1]], f"{D1}/b": [["e3", 1]]})
    assert find_duplicates(plan, ["event_id"]).dates == {}


def test_hash_collisions_are_told_apart_by_the_key_values(tmp_path, monkeypatch):
    """Every key hashing the same: only the key values that really repeat are counted."""
    real = duplicates.row_hash64
    monkeypatch.setattr(duplicates, "row_hash64", lambda cols, seed: real(cols, seed) & np.uint64(1))
    # the threads' path: Ray's workers (when a test before this one left Ray running in this
    # process) would not see the patched hash
    monkeypatch.setattr(duplicates, "running_ray", lambda: None)
    monkeypatch.setattr("pipeline.storage.running_ray", lambda: None)  # step 3 (map_files) too
    found = find_duplicates(_plan(tmp_path), ["event_id", "user_id"])
    assert sorted(found.dates[D1].keys) == [("e1", 1), ("e4", 4)] and found.dates[D1].rows == 4
    batch = pa.table({"event_id": ["e1", "e4", "e2", "e1"], "user_id": [1, 4, 2, 1], "ds": [D1, D1, D1, D2]})
    assert found.repeated(batch).tolist() == [True, True, False, False]


def test_the_shards_cover_every_hash_once_by_its_top_bits(tmp_path):
    plan = _write(tmp_path, {f"{D1}/a": [[f"e{i}", i] for i in range(5000)]})
    fs, path = plan.root.fs, plan.partitions[0].files[0].path
    shards = duplicates._file_shards(fs, path, ["event_id"])
    assert len(shards) == duplicates.SHARDS
    for s, h in enumerate(shards):
        assert ((h >> duplicates._SHIFT) == s).all()
    every = np.sort(np.concatenate(shards))
    assert np.array_equal(every, np.sort(duplicates._file_hashes(fs, path, ["event_id"])))
    assert duplicates._repeated(every[:10], every[5:20]).tolist() == every[5:10].tolist()


def test_fail_names_the_date_the_counts_and_example_keys(tmp_path):
    with pytest.raises(InputError) as e:
        refuse(find_duplicates(_plan(tmp_path), ["event_id"]))
    msg = str(e.value)
    assert f"ds={D1}: 2 key(s) occur more than once (6 rows)" in msg
    assert "{'event_id': 'e1'} in a.parquet, b.parquet" in msg and "dead_letter" in msg


def test_the_preprocess_stage_sends_every_row_of_a_repeated_key_to_the_dead_letters(tmp_path):
    from models.features import CategoricalFeature, FeatureSpec
    from pipeline.stages.preprocess import Preprocessor

    found = find_duplicates(_plan(tmp_path), ["event_id"])

    class Sink:
        def write(self, rows, reasons, batch=None):
            self.rows, self.reasons = rows, reasons
            return rows.num_rows

    sink = Sink()
    spec = FeatureSpec(categorical=[CategoricalFeature("user_id", 10, "integer")])
    pre = Preprocessor(
        spec,
        ["event_id", "ds"],
        key_columns=["event_id"],
        dead_letter=sink,
        device_transforms=True,
        duplicates=found,
    )
    batch = pa.table({"event_id": ["e1", "e2", "e4", "e1"], "user_id": [1, 2, 4, 1], "ds": [D1, D1, D1, D2]})
    out = pre(batch)
    assert out.column("event_id").to_pylist() == ["e2", "e1"]
    assert sink.rows.column("event_id").to_pylist() == ["e1", "e4"] and set(sink.reasons) == {REASON}


def test_null_keys_are_not_repeats(tmp_path):
    """Rows with a null key go to the dead letters for that reason; many of them are no repeat."""
    plan = _write(tmp_path, {f"{D1}/a": [[None, 1], [None, 1], ["e1", 1]], f"{D1}/b": [[None, 1]]})
    assert find_duplicates(plan, ["event_id", "user_id"]).dates == {}


@pytest.mark.parametrize("repeats", [0, 40, 200_000])  # none; a few; past the candidates' limit
def test_repeated_hashes_are_those_of_a_full_sort(repeats):
    from pipeline.stages.duplicates import _sorted_repeats, repeated_values

    rng = np.random.default_rng(repeats)
    h = rng.integers(0, 2**63, 400_000).view(np.uint64) * np.uint64(2)
    h[rng.integers(0, len(h), repeats)] = h[rng.integers(0, len(h), repeats)]
    high = np.uint64(0xFFFFFFFF00000000)  # pairs that share their top half only: candidates, not repeats
    h[:50] = (h[:50] & high) | np.uint64(7)
    h[50:100] = (h[:50] & high) | np.uint64(9)
    h[100:110] = h[:10]  # and true repeats among them
    got = repeated_values(h)
    assert np.array_equal(got, _sorted_repeats(h))
    assert set(h[:10].tolist()) <= set(got.tolist()) and not set(h[50:100].tolist()) & set(got.tolist())
