"""A run pointed at a real head (`ray start --head` on 127.0.0.1, token authentication on) with a
token that is not the cluster's: exit 2 on the first refusal, a message that names the address and
where the token comes from, and never the token itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from support import DATES, ROOT, make_config, run_cli

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).parent / "ray")
CLUSTER_TOKEN = "cluster-token-3b8e0f21d6c94a7e"
WRONG_TOKEN = "stale-token-9d41c7a2e58b06f3"
RAY_INIT_RETRY_S = 20  # ray.init retries a refused GCS connection ~20 times, 1 s apart


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(pgid: int, grace_s: float = 5.0) -> None:
    """SIGTERM the head's process group, SIGKILL what is left after `grace_s` (its GCS server
    can outlive a SIGTERM for long), and wait until none of it runs."""
    os.killpg(pgid, signal.SIGTERM)
    deadline, sig = time.monotonic() + grace_s, signal.SIGKILL
    while True:
        time.sleep(0.5)
        try:
            if time.monotonic() > deadline:
                os.killpg(pgid, sig)
                deadline = time.monotonic() + 30
            else:
                os.killpg(pgid, 0)
        except ProcessLookupError:
            return


@pytest.fixture(scope="module")
def token_head():
    """A head with token authentication and a token of its own (not ~/.ray/auth_token), in its
    own process group and temp dir (short: Ray's socket paths have a length limit); its GCS
    address. Stopped by its process group, never by `ray stop` (which stops every Ray here)."""
    temp_dir = tempfile.mkdtemp(prefix="bs-auth-", dir="/tmp")
    gcs = _port()
    ports = {
        "--dashboard-port": _port(),
        "--dashboard-agent-listen-port": _port(),
        "--metrics-export-port": _port(),
        "--ray-client-server-port": _port(),
    }
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=CLUSTER_TOKEN)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the head's daemons stay in this process group
    )
    try:
        out, _ = proc.communicate(timeout=120)  # returns once the head is up
        assert proc.returncode == 0, f"ray start --head failed:\n{out[-3000:]}"
        yield f"127.0.0.1:{gcs}"
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop_group(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def job_yaml(dataset, checkpoints, tmp_path) -> Path:
    model_uri, extra = checkpoints.entries["safetensors"]
    cfg = make_config(str(dataset), model_uri, str(tmp_path / "out"), **extra)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _score(job_yaml: Path, address: str, monkeypatch, **auth: str):
    """`batchscore score` with RAY_ADDRESS=address and exactly the token settings in `auth`."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in auth.items():
        monkeypatch.setenv(name, value)
    t0 = time.perf_counter()
    proc = run_cli(["score", str(job_yaml), "--date", DATES[0]], address, timeout=120)
    return proc, time.perf_counter() - t0


def test_a_wrong_token_is_refused_at_once_with_a_user_error(token_head, job_yaml, monkeypatch):
    proc, took = _score(job_yaml, token_head, monkeypatch, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=WRONG_TOKEN)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert f"cannot join the Ray cluster at {token_head}" in proc.stderr
    assert "InvalidAuthToken" in proc.stderr and "here: RAY_AUTH_TOKEN is set" in proc.stderr
    for source in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"):
        assert source in proc.stderr
    assert WRONG_TOKEN not in out and CLUSTER_TOKEN not in out
    assert "Traceback" not in out and "ConnectionError" not in out
    # the whole process (imports, preflight, model) in less than ray.init's retries alone took
    assert took < RAY_INIT_RETRY_S, f"refused after {took:.1f} s"
    print(f"refused in {took:.1f} s (whole process)")


def test_the_cluster_token_without_token_mode_is_refused_with_the_reason(token_head, job_yaml, monkeypatch):
    """A driver given an address sends its token only with RAY_AUTH_MODE=token: the right token
    alone is refused too, and the message says why."""
    proc, took = _score(job_yaml, token_head, monkeypatch, RAY_AUTH_TOKEN=CLUSTER_TOKEN)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "RAY_AUTH_MODE is unset here, so no token was sent" in proc.stderr
    assert "RAY_AUTH_MODE=token" in proc.stderr and CLUSTER_TOKEN not in proc.stdout + proc.stderr
    assert took < RAY_INIT_RETRY_S, f"refused after {took:.1f} s"


def test_the_cluster_token_joins(token_head, job_yaml, monkeypatch, tmp_path):
    """No false refusal: with the cluster's token and token mode, ensure_ray joins the head."""
    token_file = tmp_path / "token"
    token_file.write_text(CLUSTER_TOKEN + "\n")
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    code = (
        "import sys, ray\n"
        "from pipeline.config import load_config\n"
        "from pipeline.run.execute import ensure_ray\n"
        "ensure_ray(load_config(sys.argv[1]))\n"
        "print('joined', ray.cluster_resources()['CPU'])\n"
    )
    env = dict(
        os.environ,
        RAY_ADDRESS=token_head,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(job_yaml)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joined 1.0" in proc.stdout
