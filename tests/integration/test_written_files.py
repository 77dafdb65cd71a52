"""The files a run writes: of about output.target_rows_per_file rows whatever the input's layout,
each carrying the key fingerprint and score profile of its rows in its footer, so that the commit
and the profile read footers, not the data again."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from support import make_config, read_delta

import pipeline.commit.partitions as partitions
import pipeline.quality.profiles as profiles
from jobs.synthetic import SyntheticSpec, write_days
from pipeline.filestats import STATS_KEY
from pipeline.run.score import run_score
from pipeline.storage import resolve

pytestmark = pytest.mark.integration

DATE = "2026-10-05"


def _small_files(tmp_path, files: int, rows_per_file: int):
    root = tmp_path / "events"
    spec = SyntheticSpec(rows_per_day=files * rows_per_file, shards_per_day=files, n_users=500, n_items=300)
    write_days(resolve(str(root)), [DATE], spec)
    return root


def _committed_files(out) -> list[dict]:
    return pa.table(DeltaTable(str(out)).get_add_actions(flatten=True)).to_pylist()


def _record_reads(monkeypatch) -> list[str]:
    """Paths the commit or the profile read rows of (inputs, and written files without stats)."""
    read: list[str] = []
    fingerprint_files, partials_of_files = partitions.fingerprint_files, profiles.partials_of_files

    def fps(fs, paths, key_columns):
        read.extend(paths)
        return fingerprint_files(fs, paths, key_columns)

    def partials(fs, paths, column):
        read.extend(paths)
        return partials_of_files(fs, paths, column)

    monkeypatch.setattr(partitions, "fingerprint_files", fps)
    monkeypatch.setattr(profiles, "partials_of_files", partials)
    return read


@pytest.mark.parametrize("mode", ["fused", "actors"])
def test_many_small_input_files_make_files_of_the_target_size_read_by_footer_only(
    ray_cluster, checkpoints, tmp_path, monkeypatch, mode
):
    data = _small_files(tmp_path, files=12, rows_per_file=500)
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    read = _record_reads(monkeypatch)
    cfg = make_config(
        str(data), model_uri, str(out), predict={"mode": mode}, output={"target_rows_per_file": 2000}
    )
    report = run_score(cfg, [DATE])

    files = _committed_files(out)
    rows = [f["num_records"] for f in files]
    assert sum(rows) == 6000 and read_delta(str(out), date=DATE).num_rows == 6000
    # 12 input files of 500 rows: files of 1000-2000 rows (blocks are combined up to the target,
    # then split evenly), at most one extra file where a write's rows reach past the target
    assert 3 <= len(files) <= 4, rows
    assert max(rows) <= 2000 and min(rows) >= 500, rows
    for f in files:
        md = pq.read_metadata(out / f["path"])
        assert STATS_KEY in md.metadata, f"{f['path']}: no stats in the footer"
    # the commit and the profile took every output file's fingerprint and profile from its
    # footer, and the input's fingerprint from what the read tasks recorded: no file read again
    assert read == []
    assert not (out / "_runs" / report.run_id / "input_keys").exists()  # removed after the run
    assert report.partitions[0].scores.count == 6000
    if mode == "fused":  # read and score still fused, a task per input file; the write apart
        names = {s.name: s.tasks for s in report.stages}
        assert names.get("ReadParquet->MapBatches(FusedScorer)") == 12, names


def test_a_date_smaller_than_the_target_is_one_file(ray_cluster, checkpoints, tmp_path):
    data = _small_files(tmp_path, files=6, rows_per_file=500)
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(data), model_uri, str(out), output={"target_rows_per_file": 1_000_000})
    run_score(cfg, [DATE])
    files = _committed_files(out)
    assert [f["num_records"] for f in files] == [3000]
