"""The local runner (ray.runner: local, the default on one machine without a GPU): the same stages
on threads in the driver's process. What it must give is exactly what the Ray job gives: the
same rows, scores, dead letters and commits, files of the configured size, locally and on S3."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from support import (
    DATES,
    SYNTH,
    direct_scores,
    latest_commit,
    make_config,
    read_delta,
    read_input,
    read_output,
    run_cli,
    with_null_keys,
)

from jobs.synthetic import write_days
from pipeline.config import StorageConfig
from pipeline.errors import ConfigError
from pipeline.filestats import stats_from_footer
from pipeline.run.score import run_score
from pipeline.storage import resolve

pytestmark = pytest.mark.integration


def _dead_letter_config(data, checkpoints, out, runner: str):
    spec = checkpoints.spec.to_dict()
    for f in spec["dense"]:
        if f["name"] == "price":
            f["on_nonfinite"] = "reject"  # the synthetic data has ~2 % null prices
    model_uri, _ = checkpoints.entries["safetensors"]
    return make_config(
        str(data),
        model_uri,
        str(out),
        preprocessing={"features": spec},
        output={"max_bad_row_fraction": 0.1, "target_rows_per_file": 1000},
        ray={"runner": runner},
    )


def _sorted(table):
    return table.sort_by("event_id").select(["event_id", "user_id", "item_id", "score"])


def test_local_runner_gives_what_the_ray_runner_gives(ray_cluster, dataset, checkpoints, tmp_path):
    """Same input (null keys and null prices: dead letters), both runners: equal predictions and
    dead letters, scores equal to the model called directly, and a report that says which ran."""
    data = with_null_keys(dataset, tmp_path)
    reports = {}
    for runner in ("local", "ray"):
        out = tmp_path / runner
        reports[runner] = run_score(_dead_letter_config(data, checkpoints, out, runner), [DATES[0]])
    assert reports["local"].pool.runner == "local" and reports["ray"].pool.runner == "ray"
    assert reports["local"].timings_s.ray_start_s is None
    assert [s.name for s in reports["local"].stages] == ["ReadParquet", "Score", "Write"]

    local, ray = (read_output(str(tmp_path / r), DATES[0]) for r in ("local", "ray"))
    assert _sorted(local).equals(_sorted(ray))
    dead = {r: read_delta(str(tmp_path / r / "_dead_letter"), date=DATES[0]) for r in ("local", "ray")}
    assert dead["local"].num_rows > 0
    assert (
        dead["local"]
        .sort_by([("event_id", "ascending"), ("reason", "ascending")])
        .select(["event_id", "reason"])
        .equals(
            dead["ray"]
            .sort_by([("event_id", "ascending"), ("reason", "ascending")])
            .select(["event_id", "reason"])
        )
    )
    assert local.num_rows + dead["local"].num_rows == read_input(str(data), DATES[0]).num_rows

    inp = read_input(str(data), DATES[0])
    scored = inp.filter(pc.is_in(inp.column("event_id"), value_set=local.column("event_id")))
    model_uri, _ = checkpoints.entries["safetensors"]
    direct = direct_scores(model_uri, scored, checkpoints.spec)
    want = dict(zip(scored.column("event_id").to_pylist(), direct, strict=True))
    got = dict(zip(local.column("event_id").to_pylist(), local.column("score").to_pylist(), strict=True))
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=0, atol=1e-6)
    assert latest_commit(str(tmp_path / "local"), DATES[0])["dead_letter_rows"] == dead["local"].num_rows


def test_local_files_hold_the_target_rows_and_carry_their_stats(dataset, checkpoints, tmp_path):
    """3,000 rows a date, 3 input files, target 1,000 (the dead letters aside): each input file is
    a unit of its own (files packed up to the target; a unit's rows never share a file with
    another's, so a rerun can adopt it alone: resume), written as one file of its scored rows,
    each footer describing its own rows; both dates committed, the first while the second was
    scored or at the end."""
    import torch

    out = tmp_path / "preds"
    cfg = _dead_letter_config(dataset, checkpoints, out, "local")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        report = run_score(cfg, DATES)
        assert torch.get_num_threads() == 3, "a library caller's torch threads are left as they were"
    finally:
        torch.set_num_threads(before)
    assert [p.output_rows + p.dead_letter_rows for p in report.partitions] == [3000, 3000]
    for d in DATES:
        files = [u for u in DeltaTable(str(out)).file_uris() if f"ds={d}/" in u]
        sizes = sorted(pq.ParquetFile(u).metadata.num_rows for u in files)
        rows = read_output(str(out), d).num_rows
        assert len(sizes) == 3 and sum(sizes) == rows and max(sizes) <= 1000, sizes
        for u in files:
            md = pq.ParquetFile(u).metadata
            assert stats_from_footer(md).rows == md.num_rows
    assert report.commits.committed == DATES  # each date in its own transaction, as it completed


def test_local_runner_on_s3_from_the_cli(s3, checkpoints, tmp_path, monkeypatch):
    """`batchscore score` with no Ray address and no GPU: the local runner, end to end on the
    S3-compatible server, in a process that never starts Ray, nor imports it (about a second of
    a run's start; Python's import log, -X importtime, lists every module the process loads)."""
    bucket = s3.make_bucket("local-runner")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    write_days(resolve(f"s3://{bucket}/events", storage), DATES, SYNTH)
    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        json.dumps(
            {
                "name": "local-s3",
                "input": {"uri": f"s3://{bucket}/events"},
                "model": {"uri": model_uri},
                "predict": {"batch_size": 1024},
                "output": {"uri": f"s3://{bucket}/scores", "key_columns": ["event_id"]},
                "storage": {"endpoint_url": s3.endpoint},
            }
        )
    )
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    proc = run_cli([str(cfg), "--date", DATES[0], "--date", DATES[1]], None, module="jobs.score")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "runner: local" in proc.stderr and "local runner:" in proc.stdout
    assert "Started a local Ray instance" not in proc.stderr
    imported = {
        line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }
    assert {"torch", "pyarrow"} <= imported, "the import log is read"
    assert "ray" not in imported, "the local runner imports ray"
    for d in DATES:
        inp = read_input(f"s3://{bucket}/events", d, storage)
        got = read_output(f"s3://{bucket}/scores", d, storage)
        assert sorted(got.column("event_id").to_pylist()) == sorted(inp.column("event_id").to_pylist())
        want = direct_scores(model_uri, inp, checkpoints.spec)
        by_key = dict(zip(got.column("event_id").to_pylist(), got.column("score").to_pylist(), strict=True))
        np.testing.assert_allclose([by_key[k] for k in inp.column("event_id").to_pylist()], want, atol=1e-6)


def test_local_runner_refuses_what_needs_ray(dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    topk = make_config(
        str(dataset),
        model_uri,
        str(tmp_path / "topk"),
        output={"top_k": {"group_by": ["user_id"], "k": 3}},
        ray={"runner": "local"},
    )
    with pytest.raises(ConfigError, match="output.top_k needs Ray's shuffle"):
        run_score(topk, [DATES[0]])
    gpu = make_config(
        str(dataset), model_uri, str(tmp_path / "gpu"), predict={"device": "cuda"}, ray={"runner": "local"}
    )
    with pytest.raises(ConfigError, match="ray.runner 'local' scores on CPU"):
        run_score(gpu, [DATES[0]])
    assert not (tmp_path / "topk").exists() and not (tmp_path / "gpu").exists()
