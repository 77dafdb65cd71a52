"""CPU per row outside the forward pass: batchscore's GPU path shape against a hand-written loop
(issue 20's CPU target: at most 1.3x), with a nearly free model (userdlrm.FreeModel) and a user's
numpy preprocessing.

Each command runs as a whole process on N and on 2N rows, `--repeat` times each (the least CPU
of the repeats counts); its CPU time is that of its whole
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


def tree_cpu(cmd: list[str], log: Path, kinds: dict[str, float] | None = None) -> tuple[float, float]:
    """(CPU seconds of `cmd` and every process it started, wall seconds); `kinds`, when given,
    gets the sampled CPU seconds per kind of process (its title: the driver, a replica, raylet).

    Two counts, the larger taken: RUSAGE_CHILDREN (exact for every descendant that was waited
    for: this process is their subreaper, so orphans are ours to reap), and psutil samples of
    every descendant's CPU every SAMPLE_S, summed over their last samples. The samples are
    needed since Ray's raylet reaps the workers it kills (a replica pool closed with ray.kill)
    without their CPU reaching any parent's RUSAGE_CHILDREN; they miss at most SAMPLE_S of CPU
    per process."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seen: dict[tuple[int, float], tuple[str, float]] = {}  # (pid, create time) -> (kind, CPU s)
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
    if kinds is not None:
        for kind, cpu in seen.values():
            kinds[kind] = round(kinds.get(kind, 0.0) + cpu, 3)
    return max(waited, sum(cpu for _, cpu in seen.values())), wall


def _kind(p) -> str:
    """A process's kind: Ray sets its workers' titles (ray::ScoringReplica, ray::IDLE), the rest
    by the program's name (raylet, gcs_server) or its module (python -m jobs.cli)."""
    args = p.cmdline()
    if not args:
        return p.name()
    if args[0].startswith("ray::"):
        return args[0].split(".")[0].split(":")[-1] or args[0]
    if "-m" in args[:-1]:
        return args[args.index("-m") + 1]
    return Path(args[1] if Path(args[0]).name.startswith("python") and len(args) > 1 else args[0]).name


def _sample(procs: list, seen: dict[tuple[int, float], tuple[str, float]]) -> None:
    for p in procs:
        try:
            t = p.cpu_times()
            key = (p.pid, p.create_time())
            kind = seen[key][0] if key in seen else _kind(p)
            seen[key] = (kind, t.user + t.system)
        except Exception:  # noqa: BLE001 - gone between the listing and the read
            continue


def _commands(root: Path, n: int, args: argparse.Namespace, weights: Path) -> dict[str, tuple[list, Path]]:
    """name -> (command, its output directory) on a dataset of `n` rows: the loop and batchscore."""
    data = make_user_data(root / f"n{n}", n, args.files)
    out = root / f"out{n}"
    loop = [sys.executable, str(HERE / "gpu_loop.py"), str(data), str(weights), str(out), "--free"]
    cfg = _config(
        root / f"free{n}.yaml",
        {
            "name": "cpu-per-row",
            "input": {"uri": str(data), "columns": ["id", *DENSE, *CATEGORICAL]},
            "model": {"uri": str(weights), "class_path": "userdlrm:FreeModel", "inputs": ["dense", "cat"]},
            "preprocessing": {"function": "userdlrm:preprocess", "batch_size": args.batch},
            **(
                {  # the GPU pool's plan, replicas on the CPU
                    "predict": {"batch_size": args.batch, "mode": "actors"},
                    "ray": {"runner": "ray", "num_gpus": 1},
                }
                if args.runner == "ray"
                else {"predict": {"batch_size": args.batch}, "ray": {"runner": "local"}}
            ),
            "output": {"uri": str(out), "key_columns": ["id"]},
            "drift": {"on_breach": "warn"},
            "report": {"html": False},
        },
    )
    dates = [a for d in DATES for a in ("--date", d)]
    return {
        "loop": ([*loop, "--batch", str(args.batch)], out),
        "batchscore": ([*batchscore_command(), "score", str(cfg), *dates], out),
    }


def _steady(out: Path) -> float | None:
    """The replicas' CPU per row after their first unit, from the run's report (the Ray
    runner's actors mode: pipeline/run/replicas.py), in us; None for the loop or the local runner."""
    reports = sorted(out.glob("_runs/*/report.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        return None
    stats = json.loads(reports[-1].read_text()).get("ray_data_stats") or ""
    line = next((x for x in stats.splitlines() if "after their first unit" in x), None)
    return float(line.split(", ")[1].split(" us")[0]) if line else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000, help="N: the runs are on N and 2N rows")
    ap.add_argument("--files", type=int, default=8, help="files per date")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--root", default="/tmp/cpu-per-row")
    ap.add_argument(
        "--runner",
        choices=["ray", "local"],
        default="ray",
        help="ray: the GPU path's shape (the target); local: the same per-row work without Ray",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command; the least CPU counts")
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
    sizes = (args.rows, 2 * args.rows)
    commands = {n: _commands(root, n, args, weights) for n in sizes}
    runs: dict[str, list] = {}
    for _ in range(args.repeat):  # alternating, so that a busy spell hits every command alike
        for n in sizes:
            for name, (cmd, out) in commands[n].items():
                shutil.rmtree(out, ignore_errors=True)
                kinds: dict[str, float] = {}
                cpu, wall = tree_cpu(cmd, root / f"{name}{n}.log", kinds)
                run = {"cpu_s": cpu, "wall_s": wall, "by_process": kinds}
                run["replicas_steady_us_per_row"] = _steady(out)
                runs.setdefault(f"{name}_{n}", []).append(run)
                print(name, n, round(cpu, 2), round(wall, 2), run["replicas_steady_us_per_row"], flush=True)
    # the least CPU of each command's repeats: the noise (other processes' cache and memory
    # traffic, Ray's start-up) only ever adds
    best = {k: min(v, key=lambda r: r["cpu_s"]) for k, v in runs.items()}
    results["runs"] = runs
    n = args.rows
    per_row = {k: (best[f"{k}_{2 * n}"]["cpu_s"] - best[f"{k}_{n}"]["cpu_s"]) / n * 1e6 for k in commands[n]}
    results["cpu_us_per_row"] = {k: round(v, 3) for k, v in per_row.items()}
    results["ratio"] = round(per_row["batchscore"] / per_row["loop"], 2)
    steady = [x for v in runs.values() for r in v if (x := r["replicas_steady_us_per_row"])]
    if steady:  # start-up excluded by the replicas' own records, not by the difference of two runs
        results["replicas_steady_us_per_row"] = {"min": min(steady), "max": max(steady), "runs": len(steady)}
    a, b = best[f"batchscore_{n}"]["by_process"], best[f"batchscore_{2 * n}"]["by_process"]
    results["batchscore_us_per_row_by_process"] = {
        k: round((b.get(k, 0.0) - a.get(k, 0.0)) / n * 1e6, 3) for k in sorted({*a, *b})
    }
    print(json.dumps(results, indent=2))
    (root / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
