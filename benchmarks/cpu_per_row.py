"""CPU per row outside the forward pass: batchscore's GPU path shape against a hand-written loop
(issue 20's CPU target: at most 1.3x), with a nearly free model (userdlrm.FreeModel) and a user's
numpy preprocessing.

Each command runs twice as a whole process, on N and on 2N rows; its CPU time is that of its whole
process tree (every descendant, Ray's processes and workers included: this process is their
subreaper and reaps them all, then reads RUSAGE_CHILDREN). The difference between the two runs,
over N, is the CPU per row with start-up and fixed costs cancelled out.

    python benchmarks/cpu_per_row.py --rows 2000000 --root /tmp/cpr
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench import _env, batchscore_command  # noqa: E402
from gpu_bench import DATES, _config, make_user_data  # noqa: E402
from userdlrm import CATEGORICAL, DENSE  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
SAMPLE_S = 0.05


def tree_cpu(cmd: list[str], log: Path) -> tuple[float, float]:
    """(CPU seconds of `cmd` and every process it started, wall seconds).

    Two counts, the larger taken: RUSAGE_CHILDREN (exact for every descendant that was waited
    for: this process is their subreaper, so orphans are ours to reap), and psutil samples of
    every descendant's CPU every SAMPLE_S, summed over their last samples. The samples are
    needed since Ray's raylet reaps the workers it kills (a replica pool closed with ray.kill)
    without their CPU reaching any parent's RUSAGE_CHILDREN; they miss at most SAMPLE_S of CPU
    per process."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds last seen
    t0 = time.perf_counter()
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=HERE.parent)
        while proc.poll() is None:
            _sample(psutil.Process().children(recursive=True), seen)
            time.sleep(SAMPLE_S)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} exited {proc.returncode}; see {log}")
    deadline = time.time() + 60
    while time.time() < deadline:  # orphans (Ray's processes) were re-parented to us: reap them
        _sample(psutil.Process().children(recursive=True), seen)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(SAMPLE_S)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return max(waited, sum(seen.values())), wall


def _sample(procs: list, seen: dict[tuple[int, float], float]) -> None:
    for p in procs:
        try:
            t = p.cpu_times()
            seen[(p.pid, p.create_time())] = t.user + t.system
        except Exception:  # noqa: BLE001 - gone between the listing and the read
            continue


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000, help="N: the runs are on N and 2N rows")
    ap.add_argument("--files", type=int, default=8, help="files per date")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--root", default="/tmp/cpu-per-row")
    args = ap.parse_args()
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), os.environ.get("PYTHONPATH", "")] if p)
    from safetensors.torch import save_file
    from userdlrm import FreeModel

    weights = root / "free.safetensors"
    save_file({k: v.contiguous() for k, v in FreeModel().state_dict().items()}, str(weights))
    results: dict = {"rows": args.rows, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    for n in (args.rows, 2 * args.rows):
        data = make_user_data(root / f"n{n}", n, args.files)
        out = root / f"out{n}"
        shutil.rmtree(out, ignore_errors=True)
        loop = [sys.executable, str(HERE / "gpu_loop.py"), str(data), str(weights), str(out), "--free"]
        results[f"loop_{n}"] = tree_cpu([*loop, "--batch", str(args.batch)], root / f"loop{n}.log")
        shutil.rmtree(out, ignore_errors=True)
        cfg = _config(
            root / f"free{n}.yaml",
            {
                "name": "cpu-per-row",
                "input": {"uri": str(data), "columns": ["id", *DENSE, *CATEGORICAL]},
                "model": {
                    "uri": str(weights),
                    "class_path": "userdlrm:FreeModel",
                    "inputs": ["dense", "cat"],
                },
                "preprocessing": {"function": "userdlrm:preprocess", "batch_size": args.batch},
                "predict": {"batch_size": args.batch, "mode": "actors"},
                "ray": {"runner": "ray", "num_gpus": 1},  # the GPU pool's plan, replicas on the CPU
                "output": {"uri": str(out), "key_columns": ["id"]},
                "drift": {"on_breach": "warn"},
                "report": {"html": False},
            },
        )
        dates = [a for d in DATES for a in ("--date", d)]
        results[f"batchscore_{n}"] = tree_cpu(
            [*batchscore_command(), "score", str(cfg), *dates], root / f"bs{n}.log"
        )
        print(n, results[f"loop_{n}"], results[f"batchscore_{n}"], flush=True)
    n = args.rows
    per_row = {
        k: (results[f"{k}_{2 * n}"][0] - results[f"{k}_{n}"][0]) / n * 1e6 for k in ("loop", "batchscore")
    }
    results["cpu_us_per_row"] = {k: round(v, 3) for k, v in per_row.items()}
    results["ratio"] = round(per_row["batchscore"] / per_row["loop"], 2)
    print(json.dumps(results, indent=2))
    (root / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
