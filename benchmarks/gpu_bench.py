"""The GPU path against what a user would do instead, each timed as a whole process in one run
(issue 20). Runs on CPU too (small sizes), so `make test` keeps it from rotting.

On the same generated data (DATES x FILES Parquet files, 23 feature columns + a key) and a user's
model (benchmarks/userdlrm.py: a DLRM with ten EmbeddingBag tables, numpy preprocessing):

  loop            benchmarks/gpu_loop.py: the hand-written one-GPU loop, one process
  raydata         benchmarks/raydata_pattern.py: Ray's docs pattern (preprocess tasks, one GPU actor)
  batchscore      `batchscore score` on the Ray runner, actors mode (what runs on a cluster):
                  replicas that read, preprocess, predict and write, several per GPU
and, on the built-in data (jobs/synthetic.py) and `dlrm-base` with its transforms on the device:
  builtin_limit   the forward pass alone over tensors copied from pinned memory (gpu_check.py's)
  builtin         `batchscore score` on the Ray runner, actors mode

Each row: wall seconds from process start to exit, rows/s over that wall, the mean GPU busy %
(nvidia-smi, 100 ms samples) and peak RSS of the process tree. Results: OUT/gpu_bench.json.

    python benchmarks/gpu_bench.py --rows 128000000 --out $OUT           # on a GPU machine
    python benchmarks/gpu_bench.py --rows 200000 --files 2 --out /tmp/gb # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench import REPO, batchscore_command, read_report, run_process  # noqa: E402
from gpu_check import GpuSampler  # noqa: E402
from userdlrm import CATEGORICAL, DENSE  # noqa: E402

DATES = ["2026-11-01", "2026-11-02"]


def _write_file(args: tuple[str, int, int]) -> None:
    path, rows, seed = args
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {"id": pa.array(np.arange(rows, dtype=np.int64) + seed * 10**10)}
    for c in DENSE:
        cols[c] = pa.array(rng.gamma(1.0, 20.0, rows).astype(np.float32))
    for c in CATEGORICAL:  # heavy-tailed ids over a few million values, as real ids are
        cols[c] = pa.array((rng.zipf(1.2, rows) * 7919 + rng.integers(0, 4, rows)) % 5_000_000)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, row_group_size=1 << 20)


def make_user_data(root: Path, rows: int, files: int) -> Path:
    """DATES x `files` files of rows / (dates x files) rows each, written by one process per CPU."""
    data = root / "userdata"
    marker = root / f".user-{rows}-{files}"
    if marker.exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    per = rows // (len(DATES) * files)
    jobs = [
        (str(data / f"ds={d}" / f"part-{i:04d}.parquet"), per, 1 + di * files + i)
        for di, d in enumerate(DATES)
        for i in range(files)
    ]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_file, jobs))
    marker.touch()
    return data


def make_user_model(root: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from userdlrm import UserDLRM

    torch.manual_seed(0)
    path = root / "userdlrm.safetensors"
    save_file({k: v.contiguous() for k, v in UserDLRM().state_dict().items()}, str(path))
    return path


def _config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(
        f"# Run: batchscore score {path} --start ... (written by gpu_bench.py)\n" + yaml.safe_dump(cfg)
    )
    return path


def user_config(root: Path, data: Path, weights: Path, batch: int, out: Path) -> Path:
    return _config(
        root / "user.yaml",
        {
            "name": "gpu-bench-user",
            "input": {"uri": str(data), "columns": ["id", *DENSE, *CATEGORICAL]},
            "model": {
                "uri": str(weights),
                "class_path": "userdlrm:UserDLRM",
                "inputs": ["dense", "cat"],
                "version": "user-dlrm",
            },
            "preprocessing": {"function": "userdlrm:preprocess", "batch_size": batch},
            "predict": {"batch_size": batch, "mode": "actors"},
            "ray": {"runner": "ray"},
            "output": {"uri": str(out), "key_columns": ["id"]},
            "drift": {"on_breach": "warn"},
            "report": {"html": False},
        },
    )


def timed(name: str, cmd: list[str], logs: Path) -> dict:
    with GpuSampler() as gpu:
        r = run_process(name, cmd, logs)
    r["gpu_busy_pct"] = gpu.mean
    return r


def bench_script(
    name: str, script: str, data: Path, weights: Path, out: Path, batch: int, logs: Path
) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(HERE / script), str(data), str(weights), str(out), "--batch", str(batch)]
    r = timed(name, cmd, logs)
    inner = json.loads(r.pop("stdout_last_line"))
    r.update(rows=inner["rows"], rows_per_s=round(inner["rows"] / r["seconds"]))
    return r


def bench_batchscore(name: str, config: Path, out: Path, logs: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    dates = [a for d in DATES for a in ("--date", d)]
    r = timed(name, [*batchscore_command(), "score", str(config), *dates, *extra], logs)
    final = json.loads(r.pop("stdout_last_line"))
    report = read_report(final["report"], config)
    r.update(
        rows=final["rows_in"],
        rows_per_s=round(final["rows_in"] / r["seconds"]),
        pipeline_rows_per_s=report["throughput_rows_per_s"],
        timings_s=report["timings_s"],
        pool=report["pool"],
        stages=[{k: s.get(k) for k in ("name", "tasks", "wall_s", "task_time_s")} for s in report["stages"]],
    )
    return r


def bench_builtin(root: Path, rows: int, files: int, batch: int, logs: Path, extra: list[str]) -> dict:
    """dlrm-base with the built-in feature transforms on the device, and its forward limit."""
    from jobs.synthetic import FEATURES, SyntheticSpec, generate_day, write_days
    from models.checkpoint import save_checkpoint
    from models.dlrm import build_dlrm
    from models.features import fit_dense_stats
    from pipeline.storage import resolve

    data = root / "builtindata"
    marker = root / f".builtin-{rows}-{files}"
    synth = SyntheticSpec(rows_per_day=rows // len(DATES), shards_per_day=files)
    if not marker.exists():
        shutil.rmtree(data, ignore_errors=True)
        write_days(resolve(str(data)), DATES, synth)
        marker.touch()
    import torch

    torch.manual_seed(0)
    spec = fit_dense_stats(generate_day("2026-10-31", SyntheticSpec(rows_per_day=50_000)), FEATURES)
    buckets = [f.buckets for f in spec.categorical]
    model = build_dlrm(buckets, len(spec.dense), preset="dlrm-base").eval()
    arch = {
        "builtin": "dlrm",
        "preset": "dlrm-base",
        "kwargs": {"buckets": buckets, "num_dense": len(spec.dense)},
    }
    save_checkpoint(
        str(root / "builtin-model"),
        model,
        format="safetensors",
        version="base",
        feature_spec=spec,
        architecture=arch,
    )
    out = root / "builtin-out"
    config = _config(
        root / "builtin.yaml",
        {
            "name": "gpu-bench-builtin",
            "input": {"uri": str(data)},
            "model": {"uri": str(root / "builtin-model")},
            "preprocessing": {"batch_size": batch},
            "predict": {"batch_size": batch, "mode": "actors"},
            "ray": {"runner": "ray"},
            "output": {"uri": str(out), "key_columns": ["event_id"]},
            "drift": {"on_breach": "warn"},
            "report": {"html": False},
        },
    )
    try:
        run = bench_batchscore("builtin", config, out, logs, extra)
    except SystemExit as e:  # recorded; the limit is still measured
        run = {"error": str(e)[-2000:]}
    return {"builtin": run, "builtin_limit": builtin_limit(model, spec, data, batch)}


def builtin_limit(model, spec, data: Path, batch: int) -> dict:
    """Forward passes over one file's transformed rows, copied from pinned memory per batch."""
    import torch
    from gpu_check import forward_limit

    from models.features import transform_table

    cuda = torch.cuda.is_available()
    device = "cuda:0" if cuda else "cpu"
    f = sorted(data.rglob("*.parquet"))[0]
    feats = transform_table(pq.read_table(f, columns=spec.columns), spec)
    reps = max(1, (8 * batch) // len(feats["cat"]))
    cat = torch.from_numpy(np.tile(feats["cat"], (reps, 1)))
    dense = torch.from_numpy(np.tile(feats["dense"], (reps, 1)))
    model = model.to(device)
    with GpuSampler() as gpu:
        rps = forward_limit(model, cat, dense, batch, device, None, on_device=False)
    return {"rows_per_s": round(rps), "gpu_busy_pct": gpu.mean, "rows": int(cat.shape[0])}


def main() -> int:
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rows", type=int, default=128_000_000 if cuda else 2_000_000, help="rows over all dates"
    )
    ap.add_argument("--files", type=int, default=32, help="files per date")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--root", default="/tmp/gpu-bench", help="data, model and outputs")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="where gpu_bench.json goes")
    ap.add_argument("--logs", default=None, help="processes' stdout/stderr (default: OUT/gpu_bench_logs)")
    ap.add_argument("--only", default="loop,raydata,batchscore,builtin", help="which rows to run")
    ap.add_argument("--set", action="append", default=[], help="--set key=value for batchscore's runs")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="one more batchscore run on the user's model with these settings (key=value[,key=value])",
    )
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    # the user's module (userdlrm) importable in every process, Ray's workers included
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), os.environ.get("PYTHONPATH", "")] if p)
    root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(args.logs) if args.logs else out / "gpu_bench_logs"
    only = set(args.only.split(","))
    extra = [a for kv in args.set for a in ("--set", kv)]
    results: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cpus": os.cpu_count(),
        "rows": args.rows,
        "files_per_date": args.files,
        "batch": args.batch,
        "repo": str(REPO),
    }

    def record(key: str, value: dict | Callable[[], dict]) -> None:
        if callable(value):
            try:
                value = value()
            except SystemExit as e:  # a process failed: recorded, and the other rows still run
                value = {"error": str(e)[-2000:]}
        results[key] = value
        print(key, json.dumps(value), flush=True)
        (out / "gpu_bench.json").write_text(json.dumps(results, indent=2))

    t0 = time.perf_counter()
    data = make_user_data(root, args.rows, args.files)
    weights = make_user_model(root)
    record("data_s", {"seconds": round(time.perf_counter() - t0, 1)})
    if "loop" in only:
        record(
            "loop", bench_script("loop", "gpu_loop.py", data, weights, root / "loop-out", args.batch, logs)
        )
    if "raydata" in only:
        record(
            "raydata",
            lambda: bench_script(
                "raydata", "raydata_pattern.py", data, weights, root / "rd-out", args.batch, logs
            ),
        )
    if "batchscore" in only:
        config = user_config(root, data, weights, args.batch, root / "bs-out")
        record("batchscore", lambda: bench_batchscore("batchscore", config, root / "bs-out", logs, extra))
        for v in args.variant:
            sets = [a for kv in v.split(",") for a in ("--set", kv)]
            record(
                f"batchscore[{v}]",
                lambda s=sets: bench_batchscore("variant", config, root / "bs-out", logs, extra + s),
            )
    if "builtin" in only:
        for k, v in bench_builtin(root, args.rows, args.files, args.batch, logs, extra).items():
            record(k, v)
    loop = results.get("loop", {}).get("rows_per_s")
    if loop and "batchscore" in results:
        record("summary", {"batchscore_over_loop": round(results["batchscore"]["rows_per_s"] / loop, 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
