"""Faults with real processes: a killed predictor actor, a SIGKILLed driver, S3 errors injected by
a proxy, an unreachable output, two runs of the same date at once."""

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
from faultproxy import FaultProxy
from support import DATES, SYNTH, assert_keys_exact, make_config, plugin_config

from pipeline.commit import committed_files
from pipeline.config import StorageConfig
from pipeline.plan import StorageError, run_score
from pipeline.storage import resolve
from pipeline.synthetic import write_days

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _slow_cfg(dataset, checkpoints, out, **extra):
    return plugin_config(
        str(dataset), checkpoints.entries["safetensors"][0], str(out), "slow_features", **extra
    )


@pytest.mark.parametrize(
    "mode,title",
    [
        ("actors", "ray::MapWorker(MapBatches(Preprocessor)->MapBatches(Predictor))"),
        ("fused", "ray::ReadParquet->MapBatches(FusedScorer)->Write"),
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


def test_sigkilled_driver_publishes_nothing_and_a_rerun_is_exact(ray_cluster, dataset, checkpoints, tmp_path):
    out = tmp_path / "preds"
    cfg = _slow_cfg(dataset, checkpoints, out, output={"lock_ttl_s": 5})
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.score", str(config), "--date", DATES[0]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = out / "_locks" / f"ds={DATES[0]}.json"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert lock.exists(), "the driver never started the run"
    time.sleep(3)  # mid-run: the slow preprocessing needs ~8 s
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert not committed_files(resolve(str(out)), DATES[0]), "a killed run published a partition"
    assert not list((out / f"ds={DATES[0]}").glob("*.parquet")) if (out / f"ds={DATES[0]}").exists() else True
    killed_staging = list((out / "_staging").glob("*")) if (out / "_staging").exists() else []

    time.sleep(6)  # past lock_ttl_s: the dead run's staging counts as stale
    run_score(cfg, [DATES[0]])
    assert_keys_exact(dataset, out, DATES[0])
    assert not any(p.exists() for p in killed_staging), "staging of the killed run was left behind"


def test_transient_s3_errors_are_retried_to_an_exact_result(ray_cluster, s3, checkpoints, tmp_path):
    bucket = s3.make_bucket("flaky")
    direct = StorageConfig(endpoint_url=s3.endpoint)
    write_days(resolve(f"s3://{bucket}/events", direct), DATES[:1], SYNTH)
    model_uri, _ = checkpoints.entries["safetensors"]
    with FaultProxy(s3.endpoint, slow_every=4, drop_every=9) as proxy:
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


def test_two_runs_of_the_same_date_never_mix(ray_cluster, dataset, checkpoints, tmp_path):
    out = tmp_path / "preds"
    cfg = _slow_cfg(dataset, checkpoints, out)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    cmd = [sys.executable, "-m", "jobs.score", str(config), "--date", DATES[0]]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ]
    time.sleep(0.2)
    procs.append(
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], [(r[0], r[2][-1500:]) for r in results]
    loser = next(r for r in results if r[0] == 1)
    assert "another run" in loser[2] and "same date" in loser[2]
    assert_keys_exact(dataset, out, DATES[0])
