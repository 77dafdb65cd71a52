"""A Ray of batchscore's own (pipeline/run/execute.py ensure_ray): started without the dashboard's
API server, which ray.init otherwise waits for before the raylet starts, and without the
autoscaler's monitor, with local sockets retried every 50 ms; it still runs work, and a command's
exit shuts it down."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, sys
from ray._private.node import Node
originals = (Node.start_api_server, Node.start_monitor)
from pipeline.config import JobConfig
from pipeline.run.execute import ensure_ray
import ray
cfg = JobConfig.model_validate({"name": "t", "input": {"uri": "/x"}, "model": {"uri": "/m"},
                                "output": {"uri": "/o", "key_columns": ["k"]}, "ray": {"num_cpus": 1}})
ensure_ray(cfg)
node = ray._private.worker._global_node
print(json.dumps({
    "processes": sorted(node.all_processes),
    "restored": (Node.start_api_server, Node.start_monitor) == originals,
    "task": ray.get(ray.remote(lambda: 41 + 1).remote()),
    "worker_arenas": ray.get(ray.remote(lambda: __import__("os").environ.get("MALLOC_ARENA_MAX")).remote()),
    "driver_arenas": __import__("os").environ.get("MALLOC_ARENA_MAX"),
    "socket_retry": ray.get(ray.remote(lambda: [
        ray._raylet.Config.raylet_client_connect_timeout_milliseconds(),
        ray._raylet.Config.raylet_client_num_connect_attempts()]).remote()),
}))
"""


def _started(env: dict[str, str] | None = None) -> dict:
    import os

    mine = (
        "MALLOC_ARENA_MAX",
        "RAY_raylet_client_connect_timeout_milliseconds",
        "RAY_raylet_client_num_connect_attempts",
    )
    env = {**{k: v for k, v in os.environ.items() if k not in mine}, **(env or {})}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_ray_of_our_own_has_no_dashboard_and_runs_tasks():
    got = _started()
    assert "dashboard" not in got["processes"]  # the API server was not started
    assert "monitor" not in got["processes"]  # nor the autoscaler's monitor
    assert {"gcs_server", "raylet"} <= set(got["processes"])
    assert got["restored"]  # Ray's own method is back once ray.init returned
    assert got["task"] == 42
    assert got["worker_arenas"] == "1"  # Ray's workers (the replicas) with one malloc arena
    assert got["driver_arenas"] is None  # the driver's environment as it was
    assert got["socket_retry"] == [50, 200]  # a worker's sockets retried every 50 ms, 10 s in all


def test_a_user_s_malloc_arena_and_socket_retry_settings_are_kept():
    got = _started({"MALLOC_ARENA_MAX": "4", "RAY_raylet_client_connect_timeout_milliseconds": "700"})
    assert got["worker_arenas"] == "4" and got["driver_arenas"] == "4"
    assert got["socket_retry"] == [700, 10]  # the user's interval, Ray's own count


EXIT_CODE = """
import json
from pipeline.config import JobConfig
from pipeline.run.execute import ensure_ray
from jobs.common import exit_process
import ray
cfg = JobConfig.model_validate({"name": "t", "input": {"uri": "/x"}, "model": {"uri": "/m"},
                                "output": {"uri": "/o", "key_columns": ["k"]}, "ray": {"num_cpus": 1}})
ensure_ray(cfg)
node = ray._private.worker._global_node
pids = [i.process.pid for infos in node.all_processes.values() for i in infos]
print(json.dumps(pids), flush=True)
import atexit
atexit.register(lambda: print("at exit, Ray up:", ray.is_initialized(), flush=True))  # runs first
exit_process(3)
"""


def test_a_command_s_exit_shuts_its_ray_down_and_keeps_its_exit_code():
    import os
    import time

    out = subprocess.run([sys.executable, "-c", EXIT_CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "at exit, Ray up: False"  # shut down by the command, not by Ray's atexit
    pids = json.loads(lines[-2])
    assert pids

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:  # a zombie left to init is gone too
            return f.read().split(")")[-1].split()[0] != "Z"

    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)]  # GCS, raylet and the rest of that Ray are gone
