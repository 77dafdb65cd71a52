"""`make bench`: batchscore against the single-process limit and a hand-written script, timed as
a user would time them.

On the same generated data (hive-partitioned Parquet, several dates and shards) and the same model
(the built-in DLRM, demo preset, random weights with a fitted feature spec), in one run:

  limit       forward pass only, over tensors built beforehand, in this process, all cores
  script      `benchmarks/handwritten.py` as its own process: read a shard -> transform ->
              predict -> write, sequentially; wall time from process start to exit
  batchscore  `batchscore score CONFIG --date ...` as its own process, with its defaults (on this
              machine without a GPU or a Ray address: the local runner): wall time from process
              start to exit (start-up, pipeline, commit, report), and from its report the pipeline
              alone (`timings_s.pipeline_s`) and the time to the first scored batch
              (`timings_s.first_batch_s`)
  batchscore_ray  the same with `--set ray.runner=ray`: a new local Ray of its own

Peak memory is the summed RSS of each process tree (the process and all its descendants: Ray's
processes and workers for batchscore), sampled every 0.2 s. `--profile` adds one more batchscore
run under py-spy (every process of the tree; cProfile of the driver without py-spy), summarized
in bench-data/profile/. Figures go to ROOT/results.json; record them from an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import PeakMemory, make_model  # noqa: E402

from jobs.synthetic import SyntheticSpec, date_range, write_days  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from models.features import transform_table  # noqa: E402
from pipeline.storage import resolve  # noqa: E402


def make_data(root: Path, rows: int, days: int, shards: int) -> tuple[list[str], Path]:
    dates = date_range("2026-10-01", days)
    per_day = rows // days
    marker = root / f".done-{rows}-{days}-{shards}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        write_days(
            resolve(str(root / "data")), dates, SyntheticSpec(rows_per_day=per_day, shards_per_day=shards)
        )
        marker.touch()
    return dates, root / "data"


def bench_limit(data: Path, spec, model_dir: Path, batch: int) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(str(model_dir)).module
    files = sorted(data.rglob("*.parquet"))
    feats = [transform_table(pq.read_table(f, columns=spec.columns), spec) for f in files]
    cat = torch.from_numpy(np.concatenate([f["cat"] for f in feats]))
    dense = torch.from_numpy(np.concatenate([f["dense"] for f in feats]))
    n = cat.shape[0]
    with torch.inference_mode():
        model(cat[:batch], dense[:batch])
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            model(cat[i : i + batch], dense[i : i + batch])
        dt = time.perf_counter() - t0
    return {"rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt)}


def limit_in_a_child(data: Path, spec, model_dir: Path, batch: int) -> dict:
    """`bench_limit` in a process of its own. Why: run in this one, it left ~1.7 GiB of freed
    tensors resident in this process, and every timed run after it was 2-3 s slower on the 2-CPU
    machine (the GPU shape's 12 M rows: 20.3-21.6 s after it, 17.6-18.8 s with that memory given
    back, session 11); the timed runs must not depend on what the harness did before them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(bench_limit, data, spec, model_dir, batch).result()


REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    """The environment of a benchmarked process: this one's, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


def run_process(name: str, cmd: list[str], logs: Path) -> dict:
    """Run `cmd` as its own process; wall seconds from start to exit and the peak RSS of its
    process tree. stdout and stderr go to LOGS/NAME.{out,err}."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with out.open("wb") as fo, err.open("wb") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=REPO, env=_env())
        with PeakMemory(root=proc.pid) as mem:
            rc = proc.wait()
        seconds = time.perf_counter() - t0
    if rc != 0:
        tail = err.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{name}: {' '.join(cmd)} exited {rc}; stderr ends:\n{tail}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_gib": round(mem.peak_rss / 2**30, 2),
        "stdout_last_line": (out.read_text().strip().splitlines() or [""])[-1],
    }


def bench_script(data: Path, model_dir: Path, out: Path, batch: int, logs: Path) -> dict:
    """What a user would write by hand (benchmarks/handwritten.py), timed as a whole process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "benchmarks" / "handwritten.py"), str(data), str(model_dir), str(out)]
    r = run_process("script", [*cmd, "--batch", str(batch)], logs)
    inner = json.loads(r.pop("stdout_last_line"))
    r.update(rows=inner["rows"], rows_per_s=round(inner["rows"] / r["seconds"]), loop_s=inner["loop_s"])
    return r


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3-compatible server in its own process on 127.0.0.1 (HTTP)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        time.sleep(0.1)
    for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(k, v)
    return proc, f"http://127.0.0.1:{port}"


def upload(data: Path, endpoint: str, bucket: str) -> str:
    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    s3.create_dir(bucket)
    pafs.copy_files(
        str(data), f"{bucket}/data", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3
    )
    return f"s3://{bucket}/data"


def batchscore_command() -> list[str]:
    """The `batchscore` console script next to this interpreter (a venv's), else the module."""
    script = Path(sys.executable).with_name("batchscore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]


def write_config(path: Path, data: Path | str, model_dir: Path, out: Path | str, batch: int, endpoint=None):
    import yaml

    cfg = {
        "name": "bench",
        "input": {"uri": str(data)},
        "model": {"uri": str(model_dir)},
        "preprocessing": {"batch_size": batch},
        "predict": {"batch_size": batch},  # CPU-only: fused tasks on every CPU
        "output": {"uri": str(out), "key_columns": ["event_id"], "verify": "keys"},
        "report": {"html": False},
    }
    if endpoint:
        cfg["storage"] = {"endpoint_url": endpoint}
    path.write_text(
        f"# Run: batchscore score {path} --date ... (written by benchmarks/bench.py)\n" + yaml.safe_dump(cfg)
    )
    return path


def bench_batchscore(
    config: Path, dates: list[str], out: Path | None, logs: Path, name: str, extra: tuple[str, ...] = ()
) -> dict:
    """`batchscore score` as a user runs it, in a new process. `out`: removed first; None (on S3):
    --force, so a repeated run replaces the dates it committed. `extra`: more arguments."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    cmd = [*batchscore_command(), "score", str(config), *(a for d in dates for a in ("--date", d)), *extra]
    if out is None:
        cmd.append("--force")
    r = run_process(name, cmd, logs)
    final = json.loads(r.pop("stdout_last_line"))
    report = read_report(final["report"], config)
    t = report["timings_s"]
    rows = final["rows_in"]
    r.update(
        runner=(report.get("pool") or {}).get("runner", "ray"),
        rows=rows,
        rows_per_s=round(rows / r["seconds"]),
        first_batch_s=t.get("first_batch_s"),
        ray_start_s=t.get("ray_start_s"),
        pipeline_s=t.get("pipeline_s"),
        pipeline_rows_per_s=report["throughput_rows_per_s"],
        timings_s=t,
    )
    return r


def read_report(uri: str, config: Path) -> dict:
    """The run's report.json (local, or on the S3 server the config names)."""
    from pipeline.config import load_config
    from pipeline.storage import read_bytes

    return json.loads(read_bytes(resolve(uri, load_config(str(config), []).storage)))


def best_of(n: int, fn) -> dict:
    """The fastest of `n` runs (the machine's noise only ever adds time); all walls recorded."""
    runs = [fn() for _ in range(n)]
    best = min(runs, key=lambda r: r["seconds"])
    if n > 1:
        best["all_seconds"] = [r["seconds"] for r in runs]
    return best


def profile_batchscore(config: Path, dates: list[str], out: Path, root: Path, rate: int = 50) -> dict:
    """One more batchscore run, profiled: with py-spy, every Python process of its tree (the
    driver, Ray's processes, the workers); else cProfile of the driver. Not one of the timed
    runs (sampling 10+ processes on a few cores slows them). Summary: ROOT/profile/summary.txt."""
    prof = root / "profile"
    shutil.rmtree(prof, ignore_errors=True)
    prof.mkdir(parents=True)
    shutil.rmtree(out, ignore_errors=True)
    args = ["score", str(config), *(a for d in dates for a in ("--date", d))]
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(spy).exists():
        raw = prof / "batchscore.pyspy.txt"
        cmd = [spy, "record", "--subprocesses", "--nonblocking", "--rate", str(rate), "--format", "raw"]
        r = run_process("profile", [*cmd, "-o", str(raw), "--", *batchscore_command(), *args], prof)
        summary = summarize_pyspy(raw, rate)
        summary["tool"] = (
            f"py-spy record --subprocesses --nonblocking --rate {rate} (samples of busy threads)"
        )
    else:
        stats = prof / "driver.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "jobs.cli", *args]
        r = run_process("profile", cmd, prof)
        summary = summarize_cprofile(stats)
        summary["tool"] = "cProfile of the driver process (py-spy not installed: pip install py-spy)"
    summary["wall_s"] = r["seconds"]
    (prof / "summary.txt").write_text(render_profile(summary))
    return summary


OUR_CODE = ("pipeline/", "models/", "jobs/")
# leaves of waiting threads (native waits py-spy counts as busy): a Ray worker's task loop, and
# the local runner's driver threads between polls (progress, committer, the main thread's join)
IDLE_LEAVES = (
    "Worker.main_loop (ray/_private/worker.py",
    "Condition.wait (threading.py",
    "wait (threading.py",
    "_wait_for_tstate_lock (threading.py",
)
MARKERS = {  # external frames worth a line of their own (inclusive samples)
    "import torch": "<module> (torch/__init__.py",
    "import ray.data": "<module> (ray/data/__init__.py",
    "ray.init": "init (ray/_private/worker.py",
}


def _process_kind(label: str) -> str:
    """`process 123:"cmdline"` (py-spy) -> what the process is."""
    cmd = label.split(":", 1)[1].strip().strip('"') if ":" in label else label
    words = cmd.split()
    if not words:
        return "?"
    if "jobs.cli" in words or any(Path(w).name == "batchscore" for w in words[:2]):
        return "driver (batchscore)"
    if words[0].startswith("ray::"):
        name = words[0]
        return (
            "ray worker processes (tasks)" if name == "ray::IDLE" or "->" in name or "Map" in name else name
        )
    scripts = [Path(w).name for w in words if w.endswith(".py")]
    return scripts[0] if scripts else Path(words[0]).name


def summarize_pyspy(raw: Path, rate: int) -> dict:
    """Samples per process kind, the hottest frames (self), and inclusive samples of our code's
    functions and of a few markers (torch import, ray.init)."""
    from collections import Counter

    kinds, self_frames, ours, markers = Counter(), Counter(), Counter(), Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue  # a piece of a multi-line command line
        n = int(n)
        frames = stack.split(";")
        procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
        kind = _process_kind(frames[procs[-1]]) if procs else "?"
        frames = frames[procs[-1] + 1 :] if procs else frames
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue  # a waiting thread (see IDLE_LEAVES)
        total += n
        kinds[kind] += n
        self_frames[_short(frames[-1])] += n
        for f in {_short(f) for f in frames if any(p in f for p in OUR_CODE)}:
            ours[f] += n
        for name, marker in MARKERS.items():
            if any(f.startswith(marker) for f in frames):
                markers[name] += n

    def secs(c: Counter, k: int) -> list[list]:
        return [[name, round(v / rate, 2)] for name, v in c.most_common(k)]

    return {
        "busy_s": round(total / rate, 2),
        "by_process": secs(kinds, 20),
        "markers": secs(markers, len(MARKERS)),
        "our_code_inclusive": secs(ours, 25),
        "hottest_self": secs(self_frames, 20),
    }


def _short(frame: str) -> str:
    """`func (path/file.py:123)` -> `func (path/file.py)`: lines of one function together."""
    head, sep, tail = frame.rpartition(":")
    return head + ")" if sep and tail.rstrip(")").isdigit() else frame


def summarize_cprofile(stats_path: Path) -> dict:
    import pstats

    st = pstats.Stats(str(stats_path))
    rows = []
    for (file, line, func), (_, _, tt, ct, _) in st.stats.items():
        rows.append([f"{func} ({Path(file).name}:{line})", round(tt, 2), round(ct, 2)])
    return {
        "driver_cumulative": [[r[0], r[2]] for r in sorted(rows, key=lambda r: -r[2])[:30]],
        "driver_self": [[r[0], r[1]] for r in sorted(rows, key=lambda r: -r[1])[:20]],
    }


def render_profile(summary: dict) -> str:
    lines = [f"profile of one batchscore run: {summary.get('tool')}; wall {summary.get('wall_s')} s"]
    if "busy_s" in summary:
        lines.append(f"busy samples over all processes: {summary['busy_s']} s")
    for key, value in summary.items():
        if isinstance(value, list):
            lines.append(f"\n{key} (seconds):")
            lines += [f"  {v:8.2f}  {name}" for name, v in value]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8_000_000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--shards", type=int, default=16, help="files per day")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--root", default="bench-data")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the script and of batchscore; best kept")
    ap.add_argument("--only", default=None, help="comma-separated runs (default: all): script,batchscore,...")
    ap.add_argument(
        "--s3", action="store_true", help="also run batchscore with input and output on a local S3 server"
    )
    ap.add_argument(
        "--profile", action="store_true", help="one more batchscore run under py-spy (or cProfile)"
    )
    args = ap.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(exist_ok=True)
    logs = root / "logs"
    t0 = time.perf_counter()
    dates, data = make_data(root, args.rows, args.days, args.shards)
    took = time.perf_counter() - t0
    print(f"data: {args.rows} rows, {args.days} dates x {args.shards} files in {data} ({took:.0f} s)")
    spec = make_model(root)
    model = root / "model"
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total >> 30} GiB",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "command": "make bench  (python benchmarks/bench.py " + " ".join(sys.argv[1:]) + ")",
    }
    import pyarrow
    import ray
    import torch

    results["versions"] = {"torch": torch.__version__, "ray": ray.__version__, "pyarrow": pyarrow.__version__}
    config = write_config(root / "bench.yaml", data, model, root / "out-batchscore", args.batch)
    with PeakMemory() as mem:
        results["limit"] = limit_in_a_child(data, spec, model, args.batch)
    results["limit"]["peak_rss_gib"] = round(mem.peak_rss / 2**30, 2)
    results["limit"]["note"] = "in a child process of the benchmark: forward passes only"
    print("limit", json.dumps(results["limit"]), flush=True)
    runs = (
        ("script", lambda: bench_script(data, model, root / "out-script", args.batch, logs)),
        ("batchscore", lambda: bench_batchscore(config, dates, root / "out-batchscore", logs, "batchscore")),
        (
            "batchscore_ray",
            lambda: bench_batchscore(
                config, dates, root / "out-batchscore", logs, "batchscore_ray", ("--set", "ray.runner=ray")
            ),
        ),
        (
            # the GPU path's shape on CPU: actors, a Ray that declares one GPU, replicas sharing it
            "batchscore_ray_gpu_shape",
            lambda: bench_batchscore(
                config,
                dates,
                root / "out-batchscore",
                logs,
                "batchscore_ray_gpu_shape",
                ("--set", "ray.runner=ray", "--set", "predict.mode=actors", "--set", "ray.num_gpus=1"),
            ),
        ),
    )
    only = set(args.only.split(",")) if args.only else {name for name, _ in runs}
    runs = tuple((name, fn) for name, fn in runs if name in only | {"script"})
    for name, fn in runs:
        results[name] = best_of(args.repeat, fn)
        print(name, json.dumps(results[name]), flush=True)
    names = ["limit", "script", "batchscore", "batchscore_ray", "batchscore_ray_gpu_shape"]
    if args.s3:
        server, endpoint = start_s3_server()
        try:
            t0 = time.perf_counter()
            uri = upload(data, endpoint, "bench")
            print(f"uploaded {data} to {uri} on {endpoint} ({time.perf_counter() - t0:.0f} s)")
            s3_config = write_config(
                root / "bench-s3.yaml", uri, model, "s3://bench/out", args.batch, endpoint
            )
            r = best_of(args.repeat, lambda: bench_batchscore(s3_config, dates, None, logs, "batchscore_s3"))
            r["storage"] = "moto S3 server on 127.0.0.1 (HTTP), separate process, not counted in RSS"
            results["batchscore_s3"] = r
            names.append("batchscore_s3")
            print("batchscore_s3", json.dumps(r), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    if args.profile:
        results["profile"] = profile_batchscore(config, dates, root / "out-batchscore", root)
        print(render_profile(results["profile"]), flush=True)
    limit, script = results["limit"]["rows_per_s"], results["script"]["rows_per_s"]
    print(
        "\n| run | whole process s | rows/s | ratio to limit | ratio to script | first batch s "
        "| pipeline rows/s | peak RSS (GiB) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for name in [n for n in names if n in results]:
        r = results[name]
        print(
            f"| {name} | {r['seconds']} | {r['rows_per_s']:,} | {r['rows_per_s'] / limit:.2f} "
            f"| {r['rows_per_s'] / script:.2f} | {r.get('first_batch_s') or '-'} "
            f"| {r.get('pipeline_rows_per_s') or '-'} | {r['peak_rss_gib']} |"
        )
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {root / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
