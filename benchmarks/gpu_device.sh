#!/usr/bin/env bash
# Every GPU check and benchmark in one command, for a lent GPU machine (issue 20). Prepare here:
#   bash ../shared/tools/gpu-bundle.sh        # .gpu/site.tar.xz: Ray, deltalake, pydantic
# then run it there with carry [".gpu"]:  bash benchmarks/gpu_device.sh
# Results under $OUT: nvidia-smi.txt, pytest-gpu.txt, gpu_check.json, gpu_bench.json, logs.tar.gz.
# Knobs: ROWS (default 128 M), ONLY (gpu_bench rows), SKIP_TESTS=1, SKIP_CHECK=1, BENCH_ARGS.
# It runs on a machine without a GPU too (the bundle is then optional): CPU paths, small ROWS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
ROWS=${ROWS:-128000000}
ONLY=${ONLY:-loop,raydata,batchscore,builtin}
LOGS=/tmp/gpu-bench-logs
mkdir -p "$OUT" "$LOGS"
PY=${PY:-python3}
if [ -f .gpu/site.tar.xz ] && ! $PY -c "import ray, deltalake, pydantic" 2>/dev/null; then
  mkdir -p /tmp/site && tar xJf .gpu/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc; free -g; } | tee "$OUT/nvidia-smi.txt"
$PY -c "import torch, ray, pyarrow, deltalake; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__, 'pyarrow', pyarrow.__version__, 'deltalake', deltalake.__version__)"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 240 $PY -m pytest -q -p no:cacheprovider tests/gpu -W ignore::DeprecationWarning > "$OUT/pytest-gpu.txt" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$OUT/pytest-gpu.txt" | tail -15
fi
if [ "${SKIP_CHECK:-0}" != 1 ]; then
  timeout 180 $PY benchmarks/gpu_check.py --out "$OUT" --skip-pipeline 2>&1 | grep -E "^(limit|predictor|preprocess)" | cut -c1-200
fi
timeout "${BENCH_TIMEOUT:-420}" $PY benchmarks/gpu_bench.py --rows "$ROWS" --only "$ONLY" --out "$OUT" \
  --logs "$LOGS" ${BENCH_ARGS:-} 2>&1 | grep -v -E "^\s*$|WARNING|INFO" | cut -c1-1500 | tail -40
tar czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
for f in "$LOGS"/*.err; do [ -s "$f" ] && { echo "== $f"; tail -c 1500 "$f"; }; done 2>/dev/null | tail -80
