"""The `batchscore` CLI end to end, as a user runs it: real subprocesses, exit codes, output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from support import DATES, SYNTH, direct_scores, read_input, read_output, run_cli, scores_by_key, summary_row

from jobs.synthetic import write_days
from pipeline.config import StorageConfig
from pipeline.storage import resolve

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_own_torchscript_model_and_yaml_score_parquet_on_s3(ray_cluster, s3, checkpoints, tmp_path):
    """A user's TorchScript file + a YAML config of their own, data on s3://: no code change."""
    bucket = s3.make_bucket("own-model")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    write_days(resolve(f"s3://{bucket}/clicks", storage), DATES[:1], SYNTH)
    ts_file = Path(checkpoints.entries["torchscript"][0]) / "model.ts"
    dst = resolve(f"s3://{bucket}/models/ranker.pt", storage)
    pafs.copy_files(str(ts_file), dst.path, destination_filesystem=dst.fs)
    config = tmp_path / "my_job.yaml"
    config.write_text(
        "# batchscore score my_job.yaml --date 2026-10-01\n"
        + yaml.safe_dump(
            {
                "name": "my-ranker",
                "input": {"uri": f"s3://{bucket}/clicks"},
                "preprocessing": {"features": checkpoints.spec.to_dict()},
                "model": {"uri": f"s3://{bucket}/models/ranker.pt", "version": "ranker-7"},
                "predict": {"batch_size": 2048},
                "output": {"uri": f"s3://{bucket}/scores", "key_columns": ["event_id"]},
                "storage": {"endpoint_url": s3.endpoint},
            }
        )
    )
    proc = run_cli([str(config), "--date", DATES[0]], ray_cluster.address, module="jobs.score")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["status"] == "succeeded" and last["rows_in"] == last["rows_out"] == 3000
    assert last["report"].startswith(f"s3://{bucket}/scores/_runs/")
    assert summary_row(proc.stdout, DATES[0])[1:4] == ["3,000", "3,000", "0"]
    # the resolved config is logged at start; credentials are not
    assert "my-ranker" in proc.stderr and os.environ["AWS_SECRET_ACCESS_KEY"] not in proc.stderr + proc.stdout

    inp = read_input(f"s3://{bucket}/clicks", DATES[0], storage)
    got = read_output(f"s3://{bucket}/scores", DATES[0], storage)
    want = dict(
        zip(
            inp.column("event_id").to_pylist(),
            direct_scores(str(ts_file), inp, checkpoints.spec).tolist(),
            strict=True,
        )
    )
    got_scores = scores_by_key(got)
    assert got_scores.keys() == want.keys()
    assert max(abs(got_scores[k] - want[k]) for k in want) < 1e-6
    assert set(got.column("model_version").to_pylist()) == {"ranker-7"}


def test_exit_codes_name_the_problem(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    base = {
        "name": "codes",
        "input": {"uri": str(dataset)},
        "model": {"uri": model_uri},
        "output": {"uri": str(tmp_path / "out"), "key_columns": ["event_id"]},
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(base))

    missing = run_cli(["score", str(cfg), "--date", "2031-01-01"], ray_cluster.address)
    assert missing.returncode == 2
    assert "ds=2031-01-01 does not exist" in missing.stderr

    bad_key = run_cli(
        ["validate", str(cfg), "--date", DATES[0], "--set", "predict.batchsize=3"],
        ray_cluster.address,
    )
    assert bad_key.returncode == 2 and "predict.batchsize: unknown key" in bad_key.stderr

    ok = run_cli([str(cfg), "--date", DATES[0]], ray_cluster.address, module="jobs.validate")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "forward  16 rows" in ok.stdout and "3000 rows" in ok.stdout


@pytest.mark.slow
def test_demo_command_end_to_end(ray_cluster, tmp_path):
    work = tmp_path / "demo"
    proc = run_cli(
        [
            "demo",
            "--workdir",
            str(work),
            "--rows-per-day",
            "8000",
            "--days",
            "2",
            "--epochs",
            "2",
        ],
        ray_cluster.address,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out AUC" in proc.stdout
    auc = float(proc.stdout.split("held-out AUC ")[1].split()[0])
    assert auc > 0.6, f"demo model barely learns: AUC {auc}"
    assert summary_row(proc.stdout, "2026-11-02")[1:4] == ["8,000", "8,000", "0"]
    assert read_output(str(work / "predictions"), "2026-11-02").num_rows == 8000
    import polars as pl  # a reader that is not ours, as the demo suggests

    assert pl.read_delta(str(work / "predictions")).filter(pl.col("ds") == "2026-11-02").height == 8000
    assert "a Delta Lake table at" in proc.stdout
    psi_train = summary_row(proc.stdout, "2026-11-02")[10]  # compared with the checkpoint's profile
    assert "run report:" in proc.stdout and float(psi_train) >= 0

    # what the demo suggests next: the run's report, in the terminal and as an HTML page
    report = run_cli(["report", str(work / "predictions")], None, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "2026-11-02" in report.stdout and "succeeded" in report.stdout
    last = json.loads(report.stdout.strip().splitlines()[-1])
    html = Path(last["html"]).read_text()
    assert last["rows_out"] == 8000 and last["drift_breach"] is False
    assert html.count('data-plot="score-histogram"') == 1 and 'data-plot="stage-throughput"' in html


@pytest.mark.slow
def test_demo_topk_kind_end_to_end(ray_cluster, tmp_path):
    """`batchscore demo --kind topk`: the demo's DLRM scores reduced to each user's 10 best items,
    one row per user, ranked, every scored row counted (about 40 s on 2 CPUs: slow tier)."""
    import pyarrow.compute as pc

    work = tmp_path / "demo"
    args = ["demo", "--workdir", str(work), "--rows-per-day", "4000", "--days", "2", "--kind", "topk"]
    proc = run_cli(args, ray_cluster.address, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top-K: one row per user" in proc.stdout and "best items" in proc.stdout
    got = read_output(str(work / "predictions-topk"), "2026-11-02")
    assert sum(got.column("candidates").to_pylist()) == 4000
    assert got.num_rows == len(pc.unique(got.column("user_id")))
    for row in got.to_pylist():
        assert len(row["item_id"]) == min(10, row["candidates"])
        assert row["score"] == sorted(row["score"], reverse=True)
