"""`make bench`: batchscore against the single-process limit and a hand-written script.

On the same generated data (hive-partitioned Parquet, several dates and shards) and the same model
(the built-in DLRM, demo preset, random weights with a fitted feature spec), in one run:

  limit       forward pass only, over tensors built beforehand, one process, all cores
  script      a hand-written sequential loop: read a shard -> transform -> predict -> write
  batchscore  `run_score` end to end on a local Ray: read -> ... -> committed output

Prints rows/s, ratios to the limit, peak RSS of the whole process tree, and batchscore's start-up
and per-stage times; writes the figures as JSON next to the data.
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
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import PeakMemory, make_model  # noqa: E402

from jobs.synthetic import SyntheticSpec, date_range, write_days
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


def bench_script(data: Path, spec, model_dir: Path, out: Path, batch: int) -> dict:
    """What a user would write by hand: one process, a loop over shards."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    model = load_model(str(model_dir)).module
    n = 0
    for f in sorted(data.rglob("*.parquet")):
        table = pq.read_table(f, columns=["event_id", *spec.columns])
        feats = transform_table(table, spec)
        scores = []
        with torch.inference_mode():
            for i in range(0, table.num_rows, batch):
                scores.append(
                    model(
                        torch.from_numpy(feats["cat"][i : i + batch]),
                        torch.from_numpy(feats["dense"][i : i + batch]),
                    ).numpy()
                )
        result = pa.table({"event_id": table.column("event_id"), "score": np.concatenate(scores)})
        target = out / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(result, target)
        n += table.num_rows
    dt = time.perf_counter() - t0
    return {"rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt)}


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


def bench_batchscore(
    data: Path | str,
    dates: list[str],
    model_dir: Path,
    out: Path | str,
    batch: int,
    endpoint: str | None = None,
) -> dict:
    import ray

    from pipeline.config import config_from_dict
    from pipeline.run.score import run_score

    if endpoint is None:
        shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    t_ray = time.perf_counter() - t0
    cfg = config_from_dict(
        {
            "name": "bench",
            "input": {"uri": str(data)},
            "model": {"uri": str(model_dir)},
            "preprocessing": {"batch_size": batch},
            "predict": {"batch_size": batch},  # CPU-only: fused tasks on every CPU
            "output": {"uri": str(out), "key_columns": ["event_id"], "verify": "keys"},
            "storage": {"endpoint_url": endpoint},
            "report": {"html": False},
        }
    )
    report = run_score(cfg, dates, force=True)
    total = time.perf_counter() - t0
    ray.shutdown()
    rows = report["rows"]["input"]
    return {
        "rows": rows,
        "seconds": round(total, 2),
        "rows_per_s": round(rows / total),
        "ray_start_s": round(t_ray, 2),
        "timings_s": report["timings_s"],
        "pipeline_rows_per_s": report["throughput_rows_per_s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8_000_000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--shards", type=int, default=16, help="files per day")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--root", default="bench-data")
    ap.add_argument(
        "--s3", action="store_true", help="also run batchscore with input and output on a local S3 server"
    )
    args = ap.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    dates, data = make_data(root, args.rows, args.days, args.shards)
    took = time.perf_counter() - t0
    print(f"data: {args.rows} rows, {args.days} dates x {args.shards} files in {data} ({took:.0f} s)")
    spec = make_model(root)
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total >> 30} GiB",
        "python": platform.python_version(),
        "command": "make bench  (python benchmarks/bench.py " + " ".join(sys.argv[1:]) + ")",
    }
    import pyarrow
    import ray
    import torch

    results["versions"] = {"torch": torch.__version__, "ray": ray.__version__, "pyarrow": pyarrow.__version__}
    for name, fn in (
        ("limit", lambda: bench_limit(data, spec, root / "model", args.batch)),
        ("script", lambda: bench_script(data, spec, root / "model", root / "out-script", args.batch)),
        (
            "batchscore",
            lambda: bench_batchscore(data, dates, root / "model", root / "out-batchscore", args.batch),
        ),
    ):
        with PeakMemory() as mem:
            r = fn()
        r["peak_rss_gib"] = round(mem.peak_rss / 2**30, 2)
        results[name] = r
        print(name, json.dumps(r), flush=True)
    names = ["limit", "script", "batchscore"]
    if args.s3:
        server, endpoint = start_s3_server()
        try:
            t0 = time.perf_counter()
            uri = upload(data, endpoint, "bench")
            print(f"uploaded {data} to {uri} on {endpoint} ({time.perf_counter() - t0:.0f} s)")
            with PeakMemory(exclude={server.pid}) as mem:
                r = bench_batchscore(uri, dates, root / "model", "s3://bench/out", args.batch, endpoint)
            r["peak_rss_gib"] = round(mem.peak_rss / 2**30, 2)
            r["storage"] = "moto S3 server on 127.0.0.1 (HTTP), separate process, not counted in RSS"
            results["batchscore_s3"] = r
            names.append("batchscore_s3")
            print("batchscore_s3", json.dumps(r), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    limit = results["limit"]["rows_per_s"]
    print("\n| run | rows/s | ratio to limit | peak RSS (GiB) |\n| --- | ---: | ---: | ---: |")
    for name in names:
        r = results[name]
        print(f"| {name} | {r['rows_per_s']:,} | {r['rows_per_s'] / limit:.2f} | {r['peak_rss_gib']} |")
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {root / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
