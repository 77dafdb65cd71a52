"""The window between a date's two commits (predictions, then dead letters), made reproducible by the
test hooks of pipeline/commit/partitions.py: real `batchscore score` processes on the S3 test server,
stopped at a chosen moment (SIGSTOP by the hook), then SIGKILLed or resumed (SIGCONT).

- Two runs of one model race: the winner commits the date's predictions and is killed (or stopped)
  before its dead letters' commit. The survivor must not exit 0 with the date's dead letters missing.
- An S3 outage during the dead letters' commit ends in a message and exit 1, not a traceback; the
  next plain run repairs the date.

After each: the date's keys are the input's, its dead letters are in their table, deltalake, DuckDB
and polars read both tables, and after `vacuum --retain-hours 0` the objects under the table are
exactly the files the logs reference (no zero-byte `ds=DATE/` markers either)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pytest
import yaml
from faultproxy import SpawnedFaultProxy
from support import (
    DATES,
    delta_options,
    make_config,
    read_delta,
    read_input,
    with_null_keys,
)

from pipeline.commit.partitions import PAUSE_BEFORE_COMMIT_ENV, PAUSE_BETWEEN_COMMITS_ENV
from pipeline.config import StorageConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
DAY = DATES[0]


class Run:
    """One `python -m jobs.score` process, its output in files (a stopped process never blocks a
    pipe), stopped by a test hook when `pause` names one."""

    def __init__(self, tmp_path: Path, config: Path, run_id: str, pause: str | None = None) -> None:
        self.flag = tmp_path / f"{run_id}.paused"
        self.log = tmp_path / f"{run_id}.log"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        if pause:
            env[pause] = str(self.flag)
        cmd = [sys.executable, "-m", "jobs.score", str(config), "--date", DAY, "--run-id", run_id]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def wait_paused(self, timeout_s: float = 240) -> None:
        """Until the hook has stopped the process (the file is written just before its SIGSTOP)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (
                f"exited {self.proc.returncode} before the hook:\n{self.output()}"
            )
            if self.flag.exists() and psutil.Process(self.proc.pid).status() == psutil.STATUS_STOPPED:
                return
            time.sleep(0.1)
        raise AssertionError(f"the hook never stopped the run:\n{self.output()[-3000:]}")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def finish(self, timeout_s: float = 240) -> int:
        return self.proc.wait(timeout=timeout_s)


@pytest.fixture
def race_setup(s3, dataset, checkpoints, tmp_path):
    """Input with null keys (dead letters), an output on the S3 server; returns a config writer."""
    bucket = s3.make_bucket(f"race-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    data = with_null_keys(dataset, tmp_path)  # 60 of 3000 rows: dead letters

    def config(endpoint: str, name: str = "job") -> Path:
        cfg = make_config(
            str(data),
            checkpoints.entries["safetensors"][0],
            f"s3://{bucket}/preds",
            ray={"runner": "local"},
            storage={"endpoint_url": endpoint},
            output={"max_bad_row_fraction": 0.05},
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        return path

    return bucket, data, config


def _duckdb_counts(uri: str, endpoint: str) -> int:
    from outside_reader import duckdb_connection

    con = duckdb_connection()
    con.execute("LOAD httpfs")
    con.execute(
        "CREATE SECRET (TYPE S3, KEY_ID ?, SECRET ?, REGION 'us-east-1', ENDPOINT ?, URL_STYLE 'path', "
        "USE_SSL false)",
        [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], endpoint.split("://", 1)[1]],
    )
    return con.execute("SELECT count(*) FROM delta_scan(?) WHERE ds = ?", [uri, DAY]).fetchone()[0]


def _assert_date_whole(s3, bucket: str, data: Path) -> None:
    """Predictions exact, the date's dead letters all there, every reader agreeing on both tables,
    and after a vacuum with no retention only the files the logs reference under the table."""
    import polars as pl
    from deltalake import DeltaTable

    direct = StorageConfig(endpoint_url=s3.endpoint)
    preds, dead_uri = f"s3://{bucket}/preds", f"s3://{bucket}/preds/_dead_letter"
    inp = read_input(str(data), DAY)
    _assert_scored_exactly(inp, read_delta(preds, direct, date=DAY))
    null_keys = inp.filter(pc.is_null(inp.column("event_id"))).num_rows
    dead = read_delta(dead_uri, direct, date=DAY)
    assert null_keys > 0 and dead.num_rows == null_keys, f"{dead.num_rows} dead letters, {null_keys} expected"
    assert dead.column("event_id").null_count == null_keys
    for uri, rows in ((preds, inp.num_rows - null_keys), (dead_uri, null_keys)):
        got = pl.read_delta(uri, storage_options=delta_options(uri, direct)).filter(pl.col("ds") == DAY)
        assert got.height == rows, f"polars read {got.height} rows of {uri}"
        assert _duckdb_counts(uri, s3.endpoint) == rows, f"DuckDB disagrees on {uri}"

    from jobs.cli import main as cli

    assert cli(["vacuum", preds, "--retain-hours", "0", "--endpoint-url", s3.endpoint]) == 0
    live = set()
    for uri in (preds, dead_uri):
        table = DeltaTable(uri, storage_options=delta_options(uri, direct))
        live |= {u.split(f"{bucket}/", 1)[1] for u in table.file_uris()}
    kept = {
        k
        for k in s3.keys(bucket, "preds/")
        if not k.startswith(("preds/_delta_log/", "preds/_dead_letter/_delta_log/", "preds/_runs/"))
    }
    assert kept == live, f"not referenced by the logs: {sorted(kept - live)}; missing: {sorted(live - kept)}"
    _assert_scored_exactly(inp, read_delta(preds, direct, date=DAY))
    assert read_delta(dead_uri, direct, date=DAY).num_rows == null_keys


def _assert_scored_exactly(inp, got) -> None:
    """Every input row with a key scored exactly once (the null-key rows are the dead letters)."""
    keys = got.column("event_id").to_pylist()
    want = [k for k in inp.column("event_id").to_pylist() if k is not None]
    assert len(keys) == len(set(keys)) == len(want), "lost or duplicated rows"
    assert set(keys) == set(want)


@pytest.mark.parametrize("winner", ["killed", "resumed after the survivor"])
def test_a_race_survivor_never_leaves_the_date_without_its_dead_letters(s3, race_setup, tmp_path, winner):
    """B plans the date and stops just before its predictions' commit; A commits the date's
    predictions and stops before its dead letters'. A is SIGKILLed (or left stopped), B resumes:
    its commit conflicts, it finds A's commit (same model and inputs) without dead letters and
    commits its own, the same rows. Resumed afterwards, A commits its own over them: same rows."""
    bucket, data, config = race_setup
    survivor = Run(tmp_path, config(s3.endpoint), "race-survivor", pause=PAUSE_BEFORE_COMMIT_ENV)
    survivor.wait_paused()
    first = Run(tmp_path, config(s3.endpoint), "race-winner", pause=PAUSE_BETWEEN_COMMITS_ENV)
    first.wait_paused()
    if winner == "killed":
        first.signal(signal.SIGKILL)
        first.finish()
    survivor.signal(signal.SIGCONT)
    code = survivor.finish()
    out = survivor.output()
    assert code == 0, out[-3000:]
    direct = StorageConfig(endpoint_url=s3.endpoint)
    dead = read_delta(f"s3://{bucket}/preds/_dead_letter", direct, date=DAY)
    assert dead.num_rows == 60, f"the survivor exited 0 with {dead.num_rows} of the date's 60 dead letters"
    assert "done by another run" in out and "not its dead letters" in out, out[-3000:]
    if winner != "killed":
        first.signal(signal.SIGCONT)
        assert first.finish() == 0, first.output()[-3000:]
    _assert_date_whole(s3, bucket, data)


OUTAGES = {  # where the run stops before S3 goes down: what it must say, what the rerun finds
    "between its two commits": (
        PAUSE_BETWEEN_COMMITS_ENV,
        f"ds={DAY}: its predictions are committed, but storage failed before its dead letters were",
        "its dead letters were not committed",
    ),
    "before its predictions' commit": (
        PAUSE_BEFORE_COMMIT_ENV,
        f"ds={DAY}: storage failed during the commit of its predictions",
        "not committed yet",
    ),
}


@pytest.mark.parametrize("moment", list(OUTAGES))
def test_an_s3_outage_in_a_commit_is_a_message_and_a_rerun_repairs(s3, race_setup, tmp_path, moment):
    """The run stops at `moment`, S3 goes down (every request 503), the run resumes: it exits 1
    saying which of the date's commits is in the log, without a traceback; once S3 is back, a
    plain rerun scores the date again and commits both."""
    bucket, data, config = race_setup
    pause, message, why_rescored = OUTAGES[moment]
    with SpawnedFaultProxy(s3.endpoint, slow_every=0, drop_every=0) as proxy:
        run = Run(tmp_path, config(proxy.endpoint, "proxied"), "outage", pause=pause)
        run.wait_paused()
        proxy.set_outage(True)
        run.signal(signal.SIGCONT)
        code = run.finish(timeout_s=400)
        out = run.output()
        assert proxy.injected["outage"] > 0
        proxy.set_outage(False)
    assert code == 1, out[-3000:]
    assert "Traceback" not in out and "\x1b[" not in out, out[-5000:]
    assert message in out, out[-3000:]
    rerun = Run(tmp_path, config(s3.endpoint), "outage-rerun")
    assert rerun.finish() == 0, rerun.output()[-3000:]
    assert why_rescored in rerun.output()
    _assert_date_whole(s3, bucket, data)
