#!/usr/bin/env bash
# The scaling benchmark in one call on a lent machine (16 CPUs; CPU-only Ray nodes, the GPU unused).
# Prepare here first, as for gpu_check.sh: bash ../shared/tools/gpu-bundle.sh (with the pydantic
# EXTRA), then run with carry [".gpu"]. Fetch $OUT/scaling.json and, here (with matplotlib):
#   python benchmarks/scaling.py --plot-only <fetched>/scaling.json --out benchmarks/
# Extra arguments go to scaling.py (default: --nodes 1,2,4 --cpus-per-node 4, 1M/2M/4M rows).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scaling-out}
mkdir -p "$OUT" /tmp/site
if [ -z "${PYTHON:-}" ] && [ -f .gpu/site.tar.xz ]; then  # the bundle; PYTHON=... runs without it
  tar xJf .gpu/site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
PY=${PYTHON:-python3}
$PY -c "import torch, ray, pyarrow; print('torch', torch.__version__, 'ray', ray.__version__, 'pyarrow', pyarrow.__version__)"
timeout 540 $PY benchmarks/scaling.py --nodes 1,2,4 --cpus-per-node 4 --root /tmp/scaling-data --out "$OUT" "$@" \
  > "$OUT/scaling.log" 2>&1
rc=$?
grep -v -E "^\s*$|INFO|WARNING|^progress" "$OUT/scaling.log" | tail -40
exit $rc
