"""The Ray runner on a few big files: a file's row groups are split over several read tasks
(fused with scoring), so the cluster's CPUs are used even when there are fewer files than CPUs.
What a reader sees must not change: every row once with the model's score, and the commit still
reconciles the input's keys from what the read tasks recorded (the row-group ranges of a file
together stand for it), without reading the input again."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from support import SYNTH, direct_scores, make_config, read_input, read_output

from jobs.synthetic import generate_day
from pipeline.filestats import ReadKeys
from pipeline.run.score import run_score

pytestmark = pytest.mark.integration


def test_one_big_file_is_read_by_several_tasks_and_scored_exactly_once(
    ray_cluster, checkpoints, tmp_path, monkeypatch
):
    data, out = tmp_path / "events", tmp_path / "preds"
    d = "2026-10-01"
    (data / f"ds={d}").mkdir(parents=True)
    pq.write_table(
        generate_day(d, replace(SYNTH, rows_per_day=6000)),
        data / f"ds={d}" / "part-0.parquet",
        row_group_size=500,
    )
    unread: list[list[str]] = []
    fingerprint = ReadKeys.fingerprint

    def spy(self, date, files):
        fp, rest = fingerprint(self, date, files)
        unread.append(rest)
        return fp, rest

    monkeypatch.setattr(ReadKeys, "fingerprint", spy)
    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = make_config(str(data), model_uri, str(out), ray={"runner": "ray"}, output={"verify": "keys"})

    report = run_score(cfg, [d])

    read_stage = next(s for s in report.stages if s.name.startswith("ReadParquet"))
    assert read_stage.name == "ReadParquet->MapBatches(FusedScorer)", report.stages  # still fused
    assert read_stage.tasks >= 2, report.stages  # the file's 12 row groups over several tasks
    assert unread == [[]], "the commit read the input again instead of the tasks' records"
    inp, got = read_input(str(data), d), read_output(str(out), d)
    keys = got.column("event_id").to_pylist()
    assert len(keys) == len(set(keys)) == inp.num_rows == 6000
    want = direct_scores(model_uri, inp, checkpoints.spec)
    by_key = dict(zip(keys, got.column("score").to_pylist(), strict=True))
    np.testing.assert_allclose([by_key[k] for k in inp.column("event_id").to_pylist()], want, atol=1e-6)


def test_fewer_single_row_group_files_than_cpus_stay_one_fused_task_each(ray_cluster, checkpoints, tmp_path):
    """Two files of one row group on a 3-CPU Ray: nothing to split, and the read stays fused
    with scoring (Ray adds a SplitBlocks step, which is never fused, when it is asked for more
    blocks than the read tasks give)."""
    data, out = tmp_path / "events", tmp_path / "preds"
    d = "2026-10-01"
    (data / f"ds={d}").mkdir(parents=True)
    rows = generate_day(d, replace(SYNTH, rows_per_day=2000))
    for i in range(2):
        pq.write_table(rows.slice(1000 * i, 1000), data / f"ds={d}" / f"part-{i}.parquet")
    model_uri, _ = checkpoints.entries["safetensors"]
    report = run_score(make_config(str(data), model_uri, str(out), ray={"runner": "ray"}), [d])
    read_stage = next(s for s in report.stages if s.name.startswith("ReadParquet"))
    assert (read_stage.name, read_stage.tasks) == ("ReadParquet->MapBatches(FusedScorer)", 2), report.stages
    assert read_output(str(out), d).num_rows == 2000
