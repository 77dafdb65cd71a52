"""The GPU checks run on CPU with tiny sizes, so they cannot rot between GPU sessions (issue 20):
`benchmarks/gpu_check.py` in `make test`, `benchmarks/gpu_bench.py` (every row, whole processes)
in the slow tier. Each in its own process, as on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _run(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "out"
    _run(
        [
            "benchmarks/gpu_check.py",
            "--rows",
            "20000",
            "--pipeline-rows",
            "20000",
            "--batch",
            "4096",
            "--out",
            str(out),
        ],
        tmp_path,
        timeout=400,
    )
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["device"] == "cpu"
    assert results["limit_fp32"]["rows_per_s"] > 0 and results["predictor_fp32"]["rows_per_s"] > 0
    run = results["pipeline_cpu_fused"]
    assert run["rows"] == 20000 and run["pool"]["mode"] == "fused"


@pytest.mark.slow
def test_gpu_bench_times_every_row_on_cpu(tmp_path):
    out = tmp_path / "out"
    args = ["--rows", "40000", "--files", "2", "--batch", "8192", "--root", str(tmp_path / "root")]
    _run(
        ["benchmarks/gpu_bench.py", *args, "--out", str(out), "--variant", "predict.replicas_per_gpu=1"],
        tmp_path,
        900,
    )
    results = json.loads((out / "gpu_bench.json").read_text())
    for name in ("loop", "raydata", "batchscore", "builtin", "batchscore[predict.replicas_per_gpu=1]"):
        assert "error" not in results[name], results[name]
        assert results[name]["rows"] == 40000 and results[name]["seconds"] > 0, name
    assert results["batchscore"]["pool"]["mode"] == "actors"
    assert results["builtin_limit"]["rows_per_s"] > 0
    assert results["summary"]["batchscore_over_loop"] > 0
