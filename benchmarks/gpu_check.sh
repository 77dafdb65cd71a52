#!/usr/bin/env bash
# One call on a lent GPU machine (see DEVELOPERS/device docs): GPU tests + GPU benchmark.
# Prepare here first:  bash ../shared/tools/gpu-bundle.sh  (with EXTRA="pydantic==... pydantic-core==..."
#                      annotated-types typing-inspection), then run with carry [".gpu"].
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/site
tar xJf .gpu/site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, ray, pyarrow; print('torch', torch.__version__, 'ray', ray.__version__, 'pyarrow', pyarrow.__version__)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu -W ignore::DeprecationWarning > "$OUT/pytest-gpu.txt" 2>&1; grep -E "^(FAILED|ERROR|E  )|passed|failed" "$OUT/pytest-gpu.txt" | head -30
timeout 300 python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | grep -v -E "^\s*$|WARNING|INFO" | tail -60
