"""GPU readiness check and benchmark, meant for one call on a lent GPU machine.

Measures, on the same model and data:
  limit      forward pass over tensors already on the GPU (fp32 and bf16)
  limit+h2d  forward pass over pinned host tensors, copied per batch
  predictor  the Predictor stage on preprocessed Arrow batches (pinned buffers, async copy)
  pipeline   batchscore end to end on a local Ray (read -> preprocess -> predict -> write -> commit)
and prints rows/s, the ratio to the limit and mean GPU utilization (nvidia-smi sampling).
Runs on CPU too (smaller defaults) so the script itself is tested where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from jobs.synthetic import FEATURES, SyntheticSpec, date_range, generate_day
from models.dlrm import build_dlrm  # noqa: E402
from models.features import fit_dense_stats, transform_table  # noqa: E402


class GpuSampler:
    """Mean GPU utilization over a phase, from `nvidia-smi -lms`."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.proc = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()
        except FileNotFoundError:
            self.proc = None
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append(float(line.strip().split(",")[0]))

    def __exit__(self, *exc) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=5)

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_limit(model, cat, dense, batch: int, device: str, dtype, on_device: bool) -> float:
    import torch

    n = cat.shape[0]
    ctx = (
        torch.autocast(device_type=device.split(":")[0], dtype=dtype)
        if dtype
        else torch.autocast("cpu", enabled=False)
    )
    if on_device:
        cat, dense = cat.to(device), dense.to(device)
    elif device.startswith("cuda"):
        cat, dense = cat.pin_memory(), dense.pin_memory()
    with torch.inference_mode(), ctx:
        for i in range(0, min(n, 3 * batch), batch):  # warm-up
            model(
                cat[i : i + batch].to(device, non_blocking=True),
                dense[i : i + batch].to(device, non_blocking=True),
            )
        sync(device)
        t0 = time.perf_counter()
        outs = []
        for i in range(0, n, batch):
            outs.append(
                model(
                    cat[i : i + batch].to(device, non_blocking=True),
                    dense[i : i + batch].to(device, non_blocking=True),
                )
            )
        torch.cat(outs).float().cpu()
        sync(device)
    return n / (time.perf_counter() - t0)


def main() -> int:
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--rows", type=int, default=8_000_000 if cuda else 400_000, help="rows for the forward limit"
    )
    ap.add_argument("--pipeline-rows", type=int, default=16_000_000 if cuda else 200_000)
    ap.add_argument("--batch", type=int, default=65_536 if cuda else 8192)
    ap.add_argument("--preset", default="dlrm-base")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-pipeline", action="store_true")
    args = ap.parse_args()
    device = "cuda:0" if cuda else "cpu"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    results: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "preset": args.preset,
        "batch": args.batch,
    }
    print(json.dumps(results), flush=True)

    # Data: synthetic days, the demo feature spec fitted on the first day.
    synth = SyntheticSpec(rows_per_day=min(args.rows, 1_000_000), shards_per_day=8)
    day0 = generate_day("2026-11-01", synth)
    spec = fit_dense_stats(day0, FEATURES)
    feats = transform_table(day0, spec)
    reps = -(-args.rows // day0.num_rows)
    cat = torch.from_numpy(np.tile(feats["cat"], (reps, 1))[: args.rows])
    dense = torch.from_numpy(np.tile(feats["dense"], (reps, 1))[: args.rows])
    model = (
        build_dlrm([f.buckets for f in spec.categorical], len(spec.dense), preset=args.preset)
        .eval()
        .to(device)
    )
    results["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)

    phases = [("limit_fp32", None, True)]
    if cuda:
        phases += [
            ("limit_bf16", torch.bfloat16, True),
            ("limit_h2d_fp32", None, False),
            ("limit_h2d_bf16", torch.bfloat16, False),
        ]
    for name, dtype, on_dev in phases:
        with GpuSampler() as s:
            rps = forward_limit(model, cat, dense, args.batch, device, dtype, on_dev)
        results[name] = {"rows_per_s": round(rps), "gpu_util_pct": s.mean}
        print(name, results[name], flush=True)

    # Predictor stage on preprocessed Arrow batches, as Ray hands them over.
    from models.checkpoint import save_checkpoint
    from pipeline.stages.predict import ModelSource, Predictor
    from pipeline.stages.preprocess import Preprocessor

    tmp = Path(tempfile.mkdtemp(prefix="gpucheck-"))
    arch = {
        "builtin": "dlrm",
        "preset": args.preset,
        "kwargs": {"buckets": [f.buckets for f in spec.categorical], "num_dense": len(spec.dense)},
    }
    save_checkpoint(
        str(tmp / "model"),
        model.cpu(),
        format="safetensors",
        version="gpu-check",
        feature_spec=spec,
        architecture=arch,
    )
    model.to(device)
    day0 = day0.append_column("ds", pa.array(["2026-11-01"] * day0.num_rows))
    pre = Preprocessor(spec, ["event_id", "ds"], device_transforms=True)  # as the pipeline hands over
    t0 = time.perf_counter()
    batches = [pre(day0.slice(i, args.batch)) for i in range(0, day0.num_rows, args.batch)]
    results["preprocess_one_core"] = {"rows_per_s": round(day0.num_rows / (time.perf_counter() - t0))}
    print("preprocess_one_core", results["preprocess_one_core"], flush=True)
    for precision in ["fp32", "bf16"] if cuda else ["fp32"]:
        pred = Predictor(
            ModelSource(uri=str(tmp / "model")),
            ["event_id", "ds"],
            run_id="bench",
            device=device,
            precision=precision,
            num_threads=os.cpu_count() or 1,
        )
        pred(batches[0])
        sync(device)
        rows = 0
        with GpuSampler() as s:
            t0 = time.perf_counter()
            while rows < args.rows // 2:
                for b in batches:
                    pred(b)
                    rows += b.num_rows
            sync(device)
            rps = rows / (time.perf_counter() - t0)
        limit = results[f"limit_h2d_{precision}" if cuda else "limit_fp32"]["rows_per_s"]
        results[f"predictor_{precision}"] = {
            "rows_per_s": round(rps),
            "ratio_to_limit_h2d": round(rps / limit, 3),
            "gpu_util_pct": s.mean,
        }
        print(f"predictor_{precision}", results[f"predictor_{precision}"], flush=True)

    if not args.skip_pipeline:
        lim = results["limit_h2d_fp32" if cuda else "limit_fp32"]["rows_per_s"]
        for key, r in run_pipeline(args, tmp, synth, cuda).items():
            r["ratio_to_limit_h2d"] = round(r["rows_per_s"] / lim, 3)
            results[key] = r

    (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


def run_pipeline(args, tmp: Path, synth: SyntheticSpec, cuda: bool) -> dict:
    """batchscore end to end, once per replica layout: whole GPUs, then fractional GPUs
    (several replicas share one GPU so their CPU-side work overlaps)."""
    import shutil

    import ray

    from jobs.synthetic import write_days
    from pipeline.config import config_from_dict
    from pipeline.run.score import run_score
    from pipeline.storage import resolve

    days = max(1, -(-args.pipeline_rows // synth.rows_per_day))
    dates = date_range("2026-11-02", days)
    write_days(resolve(str(tmp / "data")), dates[:1], synth)
    for d in dates[1:]:  # same rows under other dates: fast to make, same work to score
        shutil.copytree(tmp / "data" / f"ds={dates[0]}", tmp / "data" / f"ds={d}")
    ncpu = os.cpu_count() or 2
    ray.init(address="local", num_cpus=ncpu, include_dashboard=False, logging_level="WARNING")
    # (replicas, GPUs each, CPUs each); gpus 0 = the fused CPU-only path on every CPU
    layouts = [(4, 0.25, 1), (1, 0.0, 1)] if cuda else [(1, 0.0, 1)]
    out = {}
    for replicas, gpus, cpus in layouts:
        cfg = config_from_dict(
            {
                "name": "gpu-check",
                "input": {"uri": str(tmp / "data")},
                "model": {"uri": str(tmp / "model")},
                "preprocessing": {"batch_size": args.batch},
                "predict": {
                    "batch_size": args.batch,
                    # CPU layout: fused tasks on every CPU (max_replicas would cap them)
                    **({"min_replicas": replicas, "max_replicas": replicas} if gpus else {}),
                    "num_cpus_per_replica": cpus,
                    "num_gpus_per_replica": gpus if cuda else 0,
                    "device": "auto" if gpus else "cpu",
                    "precision": "fp32",
                },
                "output": {"uri": str(tmp / "out"), "key_columns": ["event_id"]},
            }
        )
        with GpuSampler() as s:
            report = run_score(cfg, dates, force=True)
        mode = report.pool.mode if report.pool else "?"
        key = f"pipeline_{replicas}x{gpus:g}gpu" if gpus else f"pipeline_cpu_{mode}"
        (Path(args.out) / f"{key}_ray_data_stats.txt").write_text(report.ray_data_stats or "")
        out[key] = {
            "rows": report.rows.input,
            "rows_per_s": round(report.throughput_rows_per_s or 0),
            "gpu_util_pct": s.mean,
            "pool": report.pool.model_dump() if report.pool else None,
            "timings_s": report.timings_s.model_dump(),
        }
        print(key, out[key], flush=True)
    ray.shutdown()
    return out


if __name__ == "__main__":
    sys.exit(main())
