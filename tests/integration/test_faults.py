"""Faults with real processes: a killed predictor actor, a SIGKILLed driver (mid-scoring and right
after a commit), S3 errors injected by a proxy, an unreachable output, two runs of the same date
at once (same model: one commits, the other no-ops; different models on S3: one exits 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from faultproxy import SpawnedFaultProxy
from support import (
    DATES,
    SYNTH,
    assert_keys_exact,
    delta_options,
    latest_commit,
    make_config,
    plugin_config,
    read_delta,
)

from jobs.synthetic import write_days
from pipeline.config import StorageConfig
from pipeline.errors import StorageError
from pipeline.run.score import run_score
from pipeline.storage import resolve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _slow_cfg(dataset, checkpoints, out, **extra):
    return plugin_config(
        str(dataset), checkpoints.entries["safetensors"][0], str(out), "slow_features", **extra
    )


@pytest.mark.parametrize(
    "mode,title",
    [
        ("actors", "ray::ScoringReplica"),
        ("fused", "ray::ReadParquet->MapBatches(FusedScorer)"),
    ],
)
def test_killed_model_worker_run_still_exact(ray_cluster, dataset, checkpoints, tmp_path, mode, title):
    """SIGKILL the process holding the model mid-run: a predictor actor (restarted by Ray, its
    batches retried) or a fused scoring task's worker (the task retried): output still exact."""
    import psutil

    out = tmp_path / "preds"
    cfg = _slow_cfg(dataset, checkpoints, out, predict={"mode": mode})
    result: dict = {}

    def run():
        try:
            result["report"] = run_score(cfg, [DATES[0]])
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    started = time.time()
    t = threading.Thread(target=run)
    t.start()
    killed = None
    deadline = time.time() + 60
    while time.time() < deadline and killed is None and t.is_alive():
        # Ray sets the process title of a worker to what it runs: ray::<actor class> or ray::<task>
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            # this run's actor: earlier runs' pools may still be shutting down (task workers are
            # reused, so for tasks the title alone says it is running this run's task now)
            if cmd.startswith(title) and (mode == "fused" or proc.info["create_time"] >= started - 1):
                time.sleep(1.5)  # let it process a few batches first
                try:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed = proc.info["pid"]
                break
        time.sleep(0.2)
    t.join(timeout=300)
    assert killed, f"no process titled {title!r} was found to kill"
    assert "error" not in result, result.get("error")
    assert_keys_exact(dataset, out, DATES[0])


def _score_process(cfg, tmp_path, ray_address: str | None, name: str = "job") -> subprocess.Popen:
    """`python -m jobs.score` on `cfg`: a Ray job on `ray_address`, or the local runner (None)."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.score", str(config), "--date", DATES[0]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond, proc, timeout_s: float = 120) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _files_on_disk(out) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.parquet") if p.relative_to(out).parts[0] != "_runs"}


def _live_files(out) -> set[str]:
    from deltalake import DeltaTable

    live = set()
    for sub in ("", "_dead_letter"):
        root = out / sub if sub else out
        if (root / "_delta_log").exists():
            live |= {str(Path(u).relative_to(out)) for u in DeltaTable(str(root)).file_uris()}
    return live


@pytest.mark.parametrize("runner", ["ray", "local"])
@pytest.mark.parametrize("moment", ["scoring", "right after the commit"])
def test_sigkilled_driver_leaves_nothing_readable_and_a_rerun_is_exact(
    ray_cluster, dataset, checkpoints, tmp_path, moment, runner
):
    """The driver SIGKILLed: with the Ray runner it holds the job, with the local runner it is
    the whole run (its scoring threads die with it)."""
    out = tmp_path / "preds"
    cfg = _slow_cfg(dataset, checkpoints, out, ray={"runner": runner})
    proc = _score_process(cfg, tmp_path, ray_cluster.address if runner == "ray" else None)
    if moment == "scoring":  # files written under the table, the date not committed yet
        hit = _wait_for(lambda: any(out.glob(f"ds={DATES[0]}/part-*.parquet")), proc)
    else:  # the commit is in the log; the driver still profiles, reports, cleans up
        hit = _wait_for(lambda: latest_commit(str(out), DATES[0]) is not None, proc, 180)
    assert hit and proc.poll() is None, (
        f"could not catch the driver {moment}: {proc.communicate()[1][-2000:]}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    if moment == "scoring":
        assert latest_commit(str(out), DATES[0]) is None, "a killed run committed its date"
        assert read_delta(str(out), date=DATES[0]).num_rows == 0 if (out / "_delta_log").exists() else True
        assert _files_on_disk(out), "nothing was written before the kill: the test proves nothing"
    else:
        assert_keys_exact(dataset, out, DATES[0])  # what a reader sees right after the kill
    run_score(cfg, [DATES[0]])  # a no-op after the commit, a full run before it
    assert_keys_exact(dataset, out, DATES[0])
    # vacuum with no retention leaves exactly the files the tables reference
    from jobs.cli import main as cli

    assert cli(["vacuum", str(out), "--retain-hours", "0"]) == 0
    assert _files_on_disk(out) == _live_files(out)
    assert_keys_exact(dataset, out, DATES[0])


def test_transient_s3_errors_are_retried_to_an_exact_result(ray_cluster, s3, checkpoints, tmp_path):
    bucket = s3.make_bucket("flaky")
    direct = StorageConfig(endpoint_url=s3.endpoint)
    write_days(resolve(f"s3://{bucket}/events", direct), DATES[:1], SYNTH)
    model_uri, _ = checkpoints.entries["safetensors"]
    with SpawnedFaultProxy(s3.endpoint, slow_every=4, drop_every=9) as proxy:
        cfg = make_config(
            f"s3://{bucket}/events", model_uri, f"s3://{bucket}/out", storage={"endpoint_url": proxy.endpoint}
        )
        run_score(cfg, [DATES[0]])
        injected = dict(proxy.injected)
    assert injected["slow_down"] >= 5 and injected["dropped"] >= 2, injected
    assert_keys_exact(f"s3://{bucket}/events", f"s3://{bucket}/out", DATES[0], direct)


def test_output_that_cannot_be_written_fails_fast(ray_cluster, s3, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = make_config(
        str(dataset), model_uri, "s3://no-such-bucket/preds", storage={"endpoint_url": s3.endpoint}
    )
    t0 = time.time()
    with pytest.raises(StorageError, match=r"cannot write to the output s3://no-such-bucket/preds"):
        run_score(cfg, [DATES[0]])
    assert time.time() - t0 < 30

    closed = make_config(
        str(dataset), model_uri, "s3://any/preds", storage={"endpoint_url": "http://127.0.0.1:9"}
    )
    t0 = time.time()
    with pytest.raises(StorageError, match=r"cannot write to the output s3://any/preds"):
        run_score(closed, [DATES[0]])
    assert time.time() - t0 < 60


def test_two_runs_of_the_same_date_with_the_same_model_commit_once(
    ray_cluster, dataset, checkpoints, tmp_path
):
    out = tmp_path / "preds"
    cfg = _slow_cfg(dataset, checkpoints, out)
    procs = [_score_process(cfg, tmp_path, ray_cluster.address, "a")]
    time.sleep(0.2)
    procs.append(_score_process(cfg, tmp_path, ray_cluster.address, "b"))
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0, 0], [(r[0], r[2][-1500:]) for r in results]
    assert_keys_exact(dataset, out, DATES[0])
    from deltalake import DeltaTable

    # one commit of the date: the second run found it done (same model and inputs) and no-opped
    commits = [c for c in DeltaTable(str(out)).history() if c.get("batchscore", {}).get("date") == DATES[0]]
    assert len(commits) == 1
    assert any("the same model and inputs" in r[2] or "already committed" in r[2] for r in results)
    assert _files_on_disk(out) == _live_files(out), "the losing run left its files behind"


def test_two_runs_of_one_date_with_different_models_on_s3_never_mix(ray_cluster, s3, checkpoints, tmp_path):
    """Two processes race on the Delta log on the S3 server (conditional PUTs): the date ends whole
    from one model; the other run exits 4 and publishes nothing."""
    bucket = s3.make_bucket("race")
    direct = StorageConfig(endpoint_url=s3.endpoint)
    write_days(resolve(f"s3://{bucket}/events", direct), DATES[:1], SYNTH)
    cfgs = [
        plugin_config(
            f"s3://{bucket}/events",
            checkpoints.entries[fmt][0],
            f"s3://{bucket}/preds",
            "slow_features",
            storage={"endpoint_url": s3.endpoint},
            model={"version": f"model-{fmt}"},
        )
        for fmt in ("safetensors", "torchscript")
    ]
    procs = [_score_process(c, tmp_path, ray_cluster.address, f"m{i}") for i, c in enumerate(cfgs)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 4], [(r[0], r[2][-1500:]) for r in results]
    loser = next(r for r in results if r[0] == 4)
    assert "another run committed this date while this run was scoring it" in loser[2]
    got = read_delta(f"s3://{bucket}/preds", direct, date=DATES[0])
    assert len(set(got.column("model_version").to_pylist())) == 1, "a date mixed from two models"
    assert_keys_exact(f"s3://{bucket}/events", f"s3://{bucket}/preds", DATES[0], direct)
    from deltalake import DeltaTable

    table = DeltaTable(f"s3://{bucket}/preds", storage_options=delta_options(f"s3://{bucket}/preds", direct))
    live = {u.split(f"{bucket}/", 1)[1] for u in table.file_uris()}
    on_store = {k for k in s3.keys(bucket, "preds/ds=") if k.endswith(".parquet")}
    assert on_store == live, "the losing run left its files behind"
