"""Backfill: dry run, skipping committed dates, and a backfill killed midway then rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import DATES, assert_keys_exact, latest_commit, plugin_config, read_delta, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_backfill_killed_midway_and_rerun_commits_each_date_once(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = plugin_config(str(dataset), model_uri, str(out), "slow_features")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    span = ["--start", DATES[0], "--end", DATES[-1]]

    dry = run_cli(["backfill", str(config), *span, "--dry-run"], ray_cluster.address)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert json.loads(dry.stdout.strip().splitlines()[-1])["to_score"] == DATES

    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.backfill", str(config), *span],  # one streaming run
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while latest_commit(str(out), DATES[0]) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert latest_commit(str(out), DATES[0]) is not None, "the first date was never committed"
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(1.0)  # into the second date's run
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert latest_commit(str(out), DATES[1]) is None, "killed too late to test resume"
    assert read_delta(str(out), date=DATES[1]).num_rows == 0, "a half-scored date is readable"
    first_run = latest_commit(str(out), DATES[0])["run_id"]
    # committed while the same run was still scoring the next date: no run report exists yet
    assert not (out / "_runs" / first_run / "report.json").exists()

    dry = run_cli(["backfill", str(config), *span, "--dry-run"], ray_cluster.address)
    plan = json.loads(dry.stdout.strip().splitlines()[-1])
    assert plan["to_score"] == [DATES[1]] and plan["skipped_committed"] == [DATES[0]]

    rerun = run_cli(["backfill", str(config), *span], ray_cluster.address)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert latest_commit(str(out), DATES[0])["run_id"] == first_run, "a committed date was redone"
    for d in DATES:
        assert_keys_exact(str(dataset), str(out), d)
