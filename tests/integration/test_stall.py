"""Stalls and deadlines with real processes: `batchscore score` whose preprocessing blocks forever
on one batch ends by itself (exit 5) soon after run.stall_timeout, under the local runner and a
Ray it starts (replicas in actors mode, the plain task plan); a run that will miss its deadline says
so (log line, Prometheus textfile) while it is still going, and with on_deadline fail stops (exit 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import DATES, assert_keys_exact, latest_commit, plugin_config, read_delta

from pipeline.errors import EXIT_DEADLINE, EXIT_STALLED

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
# the local runner's start is quick; a new Ray's replicas may take 20 s to start on 2 busy CPUs,
# and a run that has not started counts as stalled too
STALL_S = {"local": 6, "ray": 30}


def _start(cfg, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m jobs.score` over both test dates, with no RAY_ADDRESS: the local runner, or a
    new local Ray of the process's own (its workers inherit `env`, and die with it)."""
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    args = ["--start", DATES[0], "--end", DATES[1]]
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.score", str(config), *args],
        cwd=ROOT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(out: Path) -> dict:
    (path,) = list(out.glob("_runs/*/report.json"))
    return json.loads(path.read_text())


def _only_committed_dates_visible(dataset: Path, out: Path) -> list[str]:
    """Each date is committed whole or not there for a Delta reader; returns the committed ones."""
    committed = []
    for d in DATES:
        if latest_commit(str(out), d) is not None:
            assert_keys_exact(dataset, out, d)
            committed.append(d)
        elif (out / "_delta_log").exists():
            assert read_delta(str(out), date=d).num_rows == 0, f"{d} is visible but was never committed"
    return committed


@pytest.mark.parametrize(
    "shape",
    [
        {"ray": {"runner": "local", "num_cpus": 2}},
        {"ray": {"runner": "ray", "num_cpus": 2}, "predict": {"mode": "actors", "max_replicas": 2}},
        {"ray": {"runner": "ray", "num_cpus": 2}, "predict": {"mode": "fused"}},
    ],
    ids=["local", "ray-actors", "ray-fused"],
)
def test_a_stalled_run_ends_with_its_exit_code_and_publishes_nothing_half_done(
    dataset, checkpoints, tmp_path, shape
):
    out = tmp_path / "preds"
    blocked = tmp_path / "blocked"
    stall_s = STALL_S[shape["ray"]["runner"]]
    cfg = plugin_config(
        str(dataset),
        checkpoints.entries["safetensors"][0],
        str(out),
        "blocking_features",
        run={"stall_timeout": f"{stall_s}s"},
        report={"progress_interval_s": 1},
        **shape,
    )
    proc = _start(cfg, tmp_path, {"BATCHSCORE_TEST_BLOCKED": str(blocked)})
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    ended = time.time()
    assert proc.returncode == EXIT_STALLED, err[-3000:]
    print(err[-2500:])  # the message, for whoever reads the test's output
    assert blocked.exists(), "the plug-in never blocked: the test proves nothing"
    # from the moment the batch blocked: the timeout, the watchdog's tick, the report, Ray's end
    # (other workers may have moved after it, or nothing before it: no lower bound from here)
    waited = ended - float(blocked.read_text())
    assert waited <= stall_s + 45, (waited, err[-3000:])
    assert "run stalled" in err and "stalled stage: preprocess" in err, err[-3000:]
    assert "report:" in err
    # what was in flight: the local runner's threads, the Ray replicas and units
    if shape["ray"]["runner"] == "local":
        assert "in flight: thread batchscore-score-" in err, err[-3000:]
    elif shape["predict"]["mode"] == "actors":
        assert "units done" in err, err[-3000:]
    report = _report(out)
    assert report["status"] == "stalled"
    assert "stalled stage: preprocess" in report["error"]
    committed = _only_committed_dates_visible(dataset, out)
    assert DATES[1] not in committed, "the stalled date was published"
    assert report["commits"]["committed"] == committed


def _deadline_cfg(dataset, checkpoints, out, textfile, on_deadline: str):
    return plugin_config(
        str(dataset),
        checkpoints.entries["safetensors"][0],
        str(out),
        "slow_features",
        # a duration from the start: the slow plug-in needs ~8 s of scoring on 2 threads
        run={"deadline": "4s", "on_deadline": on_deadline, "stall_timeout": "20s"},
        report={"prometheus_textfile": str(textfile), "progress_interval_s": 1},
        ray={"runner": "local", "num_cpus": 2},
    )


def _wait_for_miss(proc: subprocess.Popen, textfile: Path) -> bool:
    """True once the textfile projects a miss while the process still runs."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        gauge = "batchscore_deadline_projected_miss{"
        lines = textfile.read_text().splitlines() if textfile.exists() else []
        if any(line.startswith(gauge) and line.endswith(" 1.0") for line in lines):
            return proc.poll() is None
        time.sleep(0.1)
    return False


def test_a_projected_deadline_miss_is_logged_and_exported_while_the_run_goes(dataset, checkpoints, tmp_path):
    out, textfile = tmp_path / "preds", tmp_path / "metrics" / "batchscore.prom"
    proc = _start(_deadline_cfg(dataset, checkpoints, out, textfile, "warn"), tmp_path)
    try:
        seen_while_running = _wait_for_miss(proc, textfile)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert seen_while_running, "no projected miss in the textfile before the run ended"
    lines = err.splitlines()
    warned = next(i for i, line in enumerate(lines) if "deadline: projected to finish at" in line)
    final = max(i for i, line in enumerate(lines) if line.startswith("progress"))
    assert warned < final, "the warning came only at the end"
    text = textfile.read_text()  # the run's end: its figures, and the deadline's
    assert "batchscore_last_run_success" in text and "batchscore_deadline_timestamp_seconds" in text
    assert "batchscore_deadline_projected_finish_timestamp_seconds" in text
    report = _report(out)
    assert report["status"] == "succeeded"
    assert report["deadline"]["projected_miss"] and report["deadline"]["missed"]
    for d in DATES:
        assert_keys_exact(dataset, out, d)


def test_on_deadline_fail_stops_the_run_at_the_deadline(dataset, checkpoints, tmp_path):
    out, textfile = tmp_path / "preds", tmp_path / "batchscore.prom"
    proc = _start(_deadline_cfg(dataset, checkpoints, out, textfile, "fail"), tmp_path)
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_DEADLINE, err[-3000:]
    assert "still scoring at the deadline" in err
    report = _report(out)
    assert report["status"] == "deadline" and report["deadline"]["missed"]
    _only_committed_dates_visible(dataset, out)
