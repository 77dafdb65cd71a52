"""`batchscore submit` against a real head started with `ray start --head` on 127.0.0.1 (token
authentication on, as Ray 2.59+ does for local clusters)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import DATES, make_config, read_input, read_output, run_cli, summary_row

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    gcs, dash = _port(), _port()
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=3",
            f"--dashboard-agent-listen-port={_port()}",
            f"--metrics-export-port={_port()}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # as on a cluster image: `python` in job entrypoints is the environment that has Ray
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"),
    )
    address = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    from jobs.submit import auth_headers

    deadline = time.time() + 120
    while True:
        try:
            JobSubmissionClient(address, headers=auth_headers()).list_jobs()
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(
                    f"ray head did not come up: {(tmp_path / 'head.log').read_text()[-3000:]}"
                ) from None
            time.sleep(1)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()


def _submit(address, config, *extra, cwd=None):
    args = ["submit", "--address", address, str(config), "--date", DATES[0], "--deps", "none", *extra]
    return run_cli(args, ray_address=None, timeout=400, cwd=cwd)


def test_submit_runs_the_job_once_and_reports_the_existing_one(ray_head, dataset, checkpoints, tmp_path):
    from ray.job_submission import JobSubmissionClient

    from jobs.submit import auth_headers

    # as a user writes it: paths relative to where they run `batchscore submit`, outside the
    # project (so not inside the uploaded working_dir), and a model with constructor kwargs whose
    # class is in a module beside the config (shipped as py_modules, imported on the cluster)
    model_uri, extra = checkpoints.entries["class_path"]
    (tmp_path / "myranker.py").write_text("from models.dlrm import DLRM as Ranker  # noqa: F401\n")
    extra = {**extra, "model": {**extra["model"], "class_path": "myranker:Ranker"}}
    out = tmp_path / "preds"
    cfg = make_config(
        os.path.relpath(dataset, tmp_path),
        os.path.relpath(model_uri, tmp_path),
        "preds",
        predict={"max_replicas": 1},
        **extra,
    )
    config = tmp_path / "outside_the_project.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    first = _submit(ray_head, config, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["submitted"] and result["status"] == "SUCCEEDED"
    assert summary_row(first.stdout, DATES[0])[1:4] == ["3,000", "3,000", "0"]  # the job's own log, followed
    inp, got = read_input(str(dataset), DATES[0]), read_output(str(out), DATES[0])
    assert sorted(got.column("event_id").to_pylist()) == sorted(inp.column("event_id").to_pylist())

    again = _submit(ray_head, config, "--no-wait", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already succeeded" in again.stdout
    assert json.loads(again.stdout.strip().splitlines()[-1])["submission_id"] == result["submission_id"]
    client = JobSubmissionClient(ray_head, headers=auth_headers())
    jobs = [j for j in client.list_jobs() if j.submission_id and j.submission_id.startswith("batchscore-")]
    assert len(jobs) == 1, "the same work was submitted twice"

    # credentials stay out of the job's metadata and runtime env (the canary from tests/conftest.py)
    info = client.get_job_info(result["submission_id"])
    blob = json.dumps(
        {"metadata": info.metadata, "runtime_env": info.runtime_env, "entrypoint": info.entrypoint}
    )
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in blob
    assert os.environ["AWS_ACCESS_KEY_ID"] not in blob
    assert "kwargs" not in blob and "class_path" not in blob  # the config travels in the upload
    assert not (ROOT / ".batchscore-submit").exists() or not any((ROOT / ".batchscore-submit").iterdir())
