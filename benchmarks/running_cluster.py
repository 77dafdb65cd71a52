"""Time to the first scored batch on a Ray that is already running (the nightly job's setting on
a cluster: RAY_ADDRESS set), against the same run on a new local Ray and on the local runner.

Starts `ray start --head` on 127.0.0.1 (its own temp dir, token and process group), runs
`batchscore score ROOT/bench.yaml` against it RUNS times, each as a new process, and records
wall time and `timings_s.first_batch_s` from each run's report; then the head is stopped.

    python benchmarks/running_cluster.py --root /tmp/bench4 [--runs 3]   (after bench.py made ROOT)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(env: dict, cpus: int) -> tuple[subprocess.Popen, str, str]:
    temp_dir = tempfile.mkdtemp(prefix="bs-run-", dir="/tmp")  # short: socket paths are limited
    gcs = _port()
    flags = ("--dashboard-agent-listen-port", "--metrics-export-port", "--ray-client-server-port")
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--num-cpus={cpus}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        *(f"{flag}={_port()}" for flag in flags),
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"ray start --head failed:\n{out[-3000:]}")
    return proc, f"127.0.0.1:{gcs}", temp_dir


def score(root: Path, env: dict, extra: list[str]) -> dict:
    config = root / "bench.yaml"
    dates = sorted(p.name.split("=", 1)[1] for p in (root / "data").glob("ds=*"))
    cmd = [str(Path(sys.executable).with_name("batchscore")), "score", str(config), "--force", *extra]
    cmd += [a for d in dates for a in ("--date", d)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    report = json.loads(Path(json.loads(proc.stdout.strip().splitlines()[-1])["report"]).read_text())
    t = report["timings_s"]
    return {
        "wall_s": round(wall, 2),
        "first_batch_s": t.get("first_batch_s"),
        "ray_start_s": t.get("ray_start_s"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="bench-data")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    root = Path(args.root).resolve()
    token = secrets.token_hex(16)  # this head's own; never printed
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    results: dict = {
        "local_runner": score(root, env, []),
        "new_local_ray": score(root, env, ["--set", "ray.runner=ray"]),
    }
    head, address, temp_dir = start_head(env, args.cpus)
    try:
        env["RAY_ADDRESS"] = address
        results["running_ray"] = [score(root, env, []) for _ in range(args.runs)]
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            time.sleep(3)
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
