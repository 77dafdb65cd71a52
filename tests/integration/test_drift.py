"""Drift check and run report on real runs: a planted shift in a date's data is flagged, and with
drift.on_breach=fail nothing of it is published (exit 3); an unshifted date passes."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from support import DATES, latest_commit, make_config, read_output, run_cli, summary_row

from pipeline.reporting.schema import load
from pipeline.run.score import run_score
from pipeline.storage import resolve

pytestmark = pytest.mark.integration
D1, D2 = DATES


def _shifted_copy(dataset, root):
    """The dataset with D2 changed the way a broken upstream job would: every item shown in the
    top position with a 7-day CTR five times higher. The model's scores move."""
    shutil.copytree(dataset, root)
    for f in sorted((root / f"ds={D2}").glob("*.parquet")):
        t = pq.read_table(f)
        pos = t.schema.get_field_index("position")
        t = t.set_column(pos, "position", pa.array(np.zeros(t.num_rows, np.int32), t.schema.field(pos).type))
        ctr = t.schema.get_field_index("item_ctr_7d")
        t = t.set_column(ctr, "item_ctr_7d", pc.min_element_wise(pc.multiply(t.column(ctr), 5.0), 1.0))
        pq.write_table(t, f)
    return root


@pytest.fixture(scope="module")
def committed_d1(ray_cluster, dataset, checkpoints, tmp_path_factory):
    """An output root with D1 committed (the reference for D2)."""
    out = tmp_path_factory.mktemp("drift") / "base"
    model_uri, _ = checkpoints.entries["safetensors"]
    run_score(make_config(str(dataset), model_uri, str(out)), [D1])
    return out


def test_unshifted_next_date_passes_against_previous_and_training(
    committed_d1, dataset, checkpoints, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(committed_d1, out)
    prom = tmp_path / "metrics" / "batchscore.prom"
    cfg = make_config(
        str(dataset),
        checkpoints.entries["safetensors"][0],
        str(out),
        report={"prometheus_textfile": str(prom)},
    )
    report = run_score(cfg, [D2])
    part = report.partitions[0]
    prev, train = part.drift.previous, part.drift.training
    assert prev.reference == f"ds={D1}" and train.reference == "checkpoint"
    assert prev.psi < 0.05 and not prev.breach, prev
    assert train.psi < 0.1 and not train.breach, train
    assert report.drift.breach is False
    # the previous date was committed by an earlier run: its stored profile is in the report, so
    # the page draws the reference the check used
    assert list(report.previous_references) == [f"ds={D1}"]
    assert (
        report.previous_references[f"ds={D1}"].count == latest_commit(str(out), D1)["score_profile"]["count"]
    )

    # score statistics agree with the committed scores
    scores = read_output(str(out), D2).column("score").to_numpy()
    s = part.scores
    assert s.count == scores.size == part.output_rows
    assert s.mean == pytest.approx(float(scores.mean()), rel=1e-5)
    assert abs((scores < s.quantiles["p50"]).mean() - 0.5) < 0.01
    # the report on storage is the one returned; the Delta commit keeps the profile for tomorrow
    saved = json.loads(resolve(report.report_uri).fs.open_input_stream(report.report_uri).read())
    assert saved["report_version"] == 1 and saved["partitions"][0]["scores"]["count"] == scores.size
    assert load(json.dumps(saved)).model_dump() == report.model_dump()
    commit = latest_commit(str(out), D2)
    assert commit["score_profile"]["count"] == scores.size
    assert commit["drift"]["breach"] is False
    assert commit["version"] == part.table_version
    # stages, replicas and timings
    names = [st.name for st in report.stages]
    # CPU-only: read, preprocess and predict fused into one task per file (predict.mode auto);
    # the write apart, collecting rows up to output.target_rows_per_file
    assert names == ["ReadParquet->MapBatches(FusedScorer)", "Write"], names
    score, write = report.stages
    assert score.rows_in == score.rows_out == scores.size and score.rows_per_s > 0
    assert write.rows_in == scores.size and write.rows_per_s > 0
    assert report.replicas and all(r.device == "cpu" for r in report.replicas)
    assert {"ray_start_s", "pipeline_s", "profile_s", "commit_s", "total_s"} <= set(
        report.timings_s.model_dump()
    )
    assert (out / "_runs" / report.run_id / "report.html").stat().st_size > 1000
    # Prometheus textfile
    text = prom.read_text()
    assert 'batchscore_last_run_success{job="itest"} 1.0' in text
    assert f'batchscore_rows_total{{job="itest",kind="output"}} {float(scores.size)!r}' in text


def test_planted_shift_in_a_backfill_is_flagged_against_the_date_before(
    ray_cluster, dataset, checkpoints, tmp_path
):
    shifted = _shifted_copy(dataset, tmp_path / "shifted")
    out = tmp_path / "out"
    cfg = make_config(str(shifted), checkpoints.entries["safetensors"][0], str(out))
    report = run_score(cfg, DATES)  # on_breach: warn (the default): flagged, and published
    first, second = report.partitions
    assert first.drift.previous is None and not first.drift.breach
    prev = second.drift.previous
    assert prev.reference == f"ds={D1}" and prev.breach and second.drift.breach
    assert prev.psi > 0.25 and prev.quantile_shift.max_in_std > 0.5
    assert any("PSI" in r for r in prev.reasons)
    assert second.drift.training.breach
    assert report.drift.breach is True and report.status == "succeeded"
    assert read_output(str(out), D2).num_rows == second.input_rows


def test_on_breach_fail_publishes_nothing_and_exits_3(
    committed_d1, dataset, checkpoints, tmp_path, ray_cluster
):
    shifted = _shifted_copy(dataset, tmp_path / "shifted")
    out = tmp_path / "out"
    shutil.copytree(committed_d1, out)
    cfg = make_config(
        str(shifted),
        checkpoints.entries["safetensors"][0],
        str(out),
        drift={"on_breach": "fail"},
        report={"progress_interval_s": 1},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = run_cli(["score", str(path), "--date", D2], ray_cluster.address)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "drift.on_breach=fail; nothing published" in proc.stderr
    assert f"ds={D2} vs previous (ds={D1}): PSI" in proc.stderr
    assert latest_commit(str(out), D2) is None
    # nothing of the rejected date on disk either: the run removed the files it wrote
    assert not list((out / f"ds={D2}").glob("*.parquet")) if (out / f"ds={D2}").exists() else True
    runs = [json.loads(p.read_text()) for p in (out / "_runs").glob("*/report.json")]
    rejected = [r for r in runs if r["status"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["drift"]["breach"] and rejected[0]["dates"] == [D2]
    # progress on stderr, as plain lines (stderr is a pipe here, not a terminal)
    progress = [line for line in proc.stderr.splitlines() if line.startswith("progress")]
    assert progress and re.search(
        r"progress 100% \| read 3\.0k/3\.0k \| scored 3\.0k \| written 3\.0k", progress[-1]
    )
    assert "\r" not in proc.stderr and "\x1b[K" not in proc.stderr
    # the same shift, accepted with on_breach=warn, publishes
    proc = run_cli(["score", str(path), "--date", D2, "--set", "drift.on_breach=warn"], ray_cluster.address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        summary_row(proc.stdout, D2)[-1] == "BREACH"
        and f"BREACH {D2} vs previous (ds={D1}): PSI" in proc.stdout
    )
    assert read_output(str(out), D2).num_rows == 3000
