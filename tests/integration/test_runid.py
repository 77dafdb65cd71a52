"""One --run-id reused, as a scheduler's retries reuse it (Airflow, Argo, cron wrappers): real
`batchscore score` processes SIGKILLed at several moments and rerun with the same id, the rerun
itself killed mid-way, two live processes with one id, and a committed file changed while the
run goes on. After each: every date's keys exactly the input's, every outside reader (deltalake,
DuckDB, polars) reads the table, and after `vacuum --retain-hours 0` the files on storage are
exactly those the tables reference."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from support import DATES, SYNTH, assert_keys_exact, delta_options, latest_commit, plugin_config, read_delta

from jobs.synthetic import write_days
from pipeline.config import StorageConfig
from pipeline.storage import resolve

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the local runner's tests start no Ray
ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "nightly-2026-12-04"


def _cfg(input_uri: str, out_uri: str, checkpoints, runner: str, **extra):
    return plugin_config(
        input_uri,
        checkpoints.entries["safetensors"][0],
        out_uri,
        "slow_features",
        ray={"runner": runner},
        **extra,
    )


def _score(cfg, tmp_path, name: str, ray_address: str | None = None) -> subprocess.Popen:
    """`python -m jobs.score CONFIG --start D0 --end D1 --run-id RUN_ID`, as a scheduler runs it."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    args = ["--start", DATES[0], "--end", DATES[-1], "--run-id", RUN_ID]
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.score", str(config), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Store:
    """The output's files as listed on local disk or on the S3 server (not through batchscore)."""

    def __init__(self, uri: str, s3=None, storage: StorageConfig | None = None) -> None:
        self.uri, self.s3, self.storage = uri, s3, storage

    def parquet(self) -> dict[str, float]:
        """Data files under the output (reports and records under _runs aside) -> mtime."""
        if self.s3 is None:
            out = Path(self.uri)
            return {
                str(p.relative_to(out)): p.stat().st_mtime
                for p in out.rglob("*.parquet")
                if p.relative_to(out).parts[0] != "_runs"
            }
        bucket, prefix = self.uri[len("s3://") :].split("/", 1)
        objs = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        return {
            o["Key"][len(prefix) + 1 :]: o["LastModified"].timestamp()
            for page in objs
            for o in page.get("Contents", [])
            if o["Key"].endswith(".parquet") and not o["Key"][len(prefix) + 1 :].startswith("_runs/")
        }

    def live(self) -> set[str]:
        """The files the predictions and dead-letter tables reference now."""
        from deltalake import DeltaTable

        live = set()
        for sub in ("", "/_dead_letter"):
            uri = self.uri + sub
            opts = delta_options(uri, self.storage)
            if DeltaTable.is_deltatable(uri, storage_options=opts):
                for u in DeltaTable(uri, storage_options=opts).file_uris():
                    live.add(u.split(self.uri.split("://")[-1] + "/", 1)[1])
        return live


def _wait_for(cond, proc: subprocess.Popen, timeout_s: float = 180) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _outside_readers(uri: str, storage: StorageConfig | None, s3=None) -> dict[str, int]:
    """Rows per reader that is not batchscore's: deltalake, polars and DuckDB's delta extension."""
    import polars as pl
    from deltalake import DeltaTable

    opts = delta_options(uri, storage)
    rows = {"deltalake": DeltaTable(uri, storage_options=opts).to_pyarrow_table().num_rows}
    rows["polars"] = pl.read_delta(uri, storage_options=opts).height
    con = _duckdb(s3)
    rows["duckdb"] = con.execute("SELECT count(*) FROM delta_scan(?)", [uri]).fetchone()[0]
    return rows


def _duckdb(s3):
    import duckdb

    ext = os.path.join(importlib.util.find_spec("duckdb_ext").submodule_search_locations[0], "extensions")
    con = duckdb.connect(config={"extension_directory": ext, "autoinstall_known_extensions": False})
    con.execute("LOAD delta")
    if s3 is not None:
        con.execute("LOAD httpfs")
        host = s3.endpoint.split("://", 1)[1]
        con.execute(
            "CREATE SECRET (TYPE S3, KEY_ID ?, SECRET ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL false, "
            "REGION 'us-east-1')",
            [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], host],
        )
    return con


def _assert_exact_everywhere(input_uri: str, store: Store) -> None:
    from jobs.cli import main as cli

    for d in DATES:
        assert_keys_exact(input_uri, store.uri, d, store.storage)
    want = SYNTH.rows_per_day * len(DATES)
    assert _outside_readers(store.uri, store.storage, store.s3) == dict.fromkeys(
        ("deltalake", "polars", "duckdb"), want
    )
    vacuum = ["vacuum", store.uri, "--retain-hours", "0"]
    if store.storage is not None and store.storage.endpoint_url:
        vacuum += ["--endpoint-url", store.storage.endpoint_url]
    assert cli(vacuum) == 0
    assert set(store.parquet()) == store.live(), "files left that no table references, or missing"
    for d in DATES:
        assert_keys_exact(input_uri, store.uri, d, store.storage)


def _moment(store: Store, name: str, since: float):
    """When to kill: `scoring` once the process wrote a data file (nothing committed yet), `committed`
    once the first date is in the log while the next is being scored."""
    if name == "scoring":
        return lambda: any(t >= since for p, t in store.parquet().items() if "/part-" in f"/{p}")
    return lambda: latest_commit(store.uri, DATES[0], store.storage) is not None


def _kill_then_rerun(tmp_path, cfg, input_uri: str, store: Store, moment: str, ray_address=None) -> None:
    """Kill at `moment`; rerun with the same id and kill that rerun once it wrote a file of its
    own; rerun again to the end: each rerun resumes or restarts cleanly."""
    first = _score(cfg, tmp_path, "first", ray_address)
    hit = _wait_for(_moment(store, moment, 0), first)
    assert hit, f"could not catch the first run {moment}: {first.communicate()[1][-3000:]}"
    _kill(first)
    if moment == "scoring":
        assert latest_commit(store.uri, DATES[0], store.storage) is None, "killed too late"

    t0 = time.time() - 1  # mtimes: whole seconds on some stores
    second = _score(cfg, tmp_path, "second", ray_address)
    hit = _wait_for(_moment(store, "scoring", t0 + 1), second)
    assert hit, f"the rerun wrote nothing: {second.communicate()[1][-3000:]}"
    _kill(second)

    third = _score(cfg, tmp_path, "third", ray_address)
    code, _, err = third.wait(timeout=300), *third.communicate()
    assert code == 0, err[-4000:]
    _assert_exact_everywhere(input_uri, store)


@pytest.mark.parametrize("moment", ["scoring", "committed"])
def test_a_killed_run_and_its_killed_rerun_with_the_same_run_id_end_exact(
    dataset, checkpoints, tmp_path, moment
):
    """The local runner on local disk (the issue's repro: fixed file names rewritten in place)."""
    out = tmp_path / "preds"
    cfg = _cfg(str(dataset), str(out), checkpoints, "local")
    _kill_then_rerun(tmp_path, cfg, str(dataset), Store(str(out)), moment)


def test_a_killed_run_rerun_with_the_same_run_id_on_s3_ends_exact(s3, checkpoints, tmp_path):
    bucket = s3.make_bucket("runid")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    events, out = f"s3://{bucket}/events", f"s3://{bucket}/preds"
    write_days(resolve(events, storage), DATES, SYNTH)
    cfg = _cfg(events, out, checkpoints, "local", storage={"endpoint_url": s3.endpoint})
    _kill_then_rerun(tmp_path, cfg, events, Store(out, s3, storage), "committed")


@pytest.mark.parametrize("mode", ["fused", "actors"])
def test_the_ray_runner_reruns_a_killed_run_id_after_its_first_commit(
    ray_cluster, dataset, checkpoints, tmp_path, mode
):
    """Fused tasks write through Ray Data's datasink, actors-mode replicas write their units' files
    themselves: both name them by attempt."""
    out = tmp_path / "preds"
    cfg = _cfg(str(dataset), str(out), checkpoints, "ray", predict={"mode": mode})
    store = Store(str(out))
    first = _score(cfg, tmp_path, "first", ray_cluster.address)
    assert _wait_for(_moment(store, "committed", 0), first), first.communicate()[1][-3000:]
    _kill(first)
    rerun = _score(cfg, tmp_path, "rerun", ray_cluster.address)
    code, _, err = rerun.wait(timeout=300), *rerun.communicate()
    assert code == 0, err[-4000:]
    assert latest_commit(str(out), DATES[0])["run_id"] == RUN_ID
    _assert_exact_everywhere(str(dataset), store)


def test_a_second_live_process_with_the_same_run_id_is_refused_before_it_writes(
    dataset, checkpoints, tmp_path
):
    out = tmp_path / "preds"
    store = Store(str(out))
    cfg = _cfg(str(dataset), str(out), checkpoints, "local")
    first = _score(cfg, tmp_path, "first")
    assert _wait_for(_moment(store, "scoring", 0), first), first.communicate()[1][-3000:]
    before = store.parquet()
    t0 = time.time()
    second = _score(cfg, tmp_path, "second")
    code, _, err = second.wait(timeout=120), *second.communicate()
    assert code == 7, err[-3000:]
    assert f"--run-id {RUN_ID}: " in err and "still running" in err, err[-3000:]
    assert first.poll() is None, "the first run did not outlive the refusal: the test proves nothing"
    # the first run goes on writing, under its attempt's names; the refused one wrote nothing
    written = {Path(p).name for p, t in store.parquet().items() if p not in before and t >= t0 + 1}
    assert {_attempt(p) for p in written} <= {_attempt(Path(p).name) for p in before}, written
    code, _, err = first.wait(timeout=300), *first.communicate()
    assert code == 0, err[-4000:]
    _assert_exact_everywhere(str(dataset), store)


def _attempt(name: str) -> str:
    """The attempt in a file name: part-RUN.ATTEMPT.REST (a run id holds no '.')."""
    return name.split(".", 2)[1]


def test_only_a_commit_that_landed_is_logged_as_committed(dataset, checkpoints, tmp_path):
    """Two runs of one date with one model (run ids of their own) race: one commits, the other's
    commit is a no-op, and its log must not say it committed."""
    out = tmp_path / "preds"
    cfg = _cfg(str(dataset), str(out), checkpoints, "local")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "jobs.score", str(config), "--date", DATES[0]]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    claims = [e.count(f"committed ds={DATES[0]}") for e in errs]
    assert sorted(claims) == [0, 1], errs
    other = errs[claims.index(0)]  # it lost the race, or (started late) found the date committed
    assert "nothing committed by this run" in other or "already committed" in other, other[-2000:]
    assert_keys_exact(str(dataset), str(out), DATES[0])


def test_a_date_changed_after_its_commit_is_withdrawn_and_the_next_run_rescores_it(
    dataset, checkpoints, tmp_path
):
    """A committed file rewritten while the run goes on (what a task re-run after the commit does):
    the run fails naming the date and the file, no reader sees the changed file as the date, and
    a plain rerun (no --force, a new run id) rescores the date."""
    import pyarrow.parquet as pq

    from pipeline.errors import CommitError
    from pipeline.run.score import run_score

    out = tmp_path / "preds"
    cfg = _cfg(str(dataset), str(out), checkpoints, "local")
    result: dict = {}

    def run() -> None:
        try:
            result["report"] = run_score(cfg, DATES)
        except BaseException as e:  # noqa: BLE001 - checked below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 180
    while latest_commit(str(out), DATES[0]) is None and time.time() < deadline and t.is_alive():
        time.sleep(0.05)
    commit = latest_commit(str(out), DATES[0])
    assert commit is not None and t.is_alive(), "the first date did not commit while the run went on"
    from deltalake import DeltaTable

    victim = sorted(u for u in DeltaTable(str(out)).file_uris() if f"ds={DATES[0]}" in u)[0]
    rows = pq.read_table(victim)
    pq.write_table(rows.slice(0, rows.num_rows // 2), victim)  # half its rows: a smaller file
    t.join(timeout=300)
    err = result.get("error")
    assert isinstance(err, CommitError), result
    assert f"ds={DATES[0]}" in str(err) and Path(victim).name in str(err), str(err)
    assert read_delta(str(out), date=DATES[0]).num_rows == 0, "a changed date stays visible"
    assert _outside_readers(str(out), None)["duckdb"] == read_delta(str(out)).num_rows

    run_score(cfg, DATES)  # a plain rerun: no --force
    _assert_exact_everywhere(str(dataset), Store(str(out)))
