"""A built-in model's load, as a replica does it (`models.checkpoint.load_model` of a safetensors
checkpoint), each load in a fresh process, alternating: with its layers' random initialization
skipped (what batchscore does) and, for comparison, with it run first as before ("initialize").

    python benchmarks/model_load.py --root /tmp/model_load --buckets 2000000,1000000,1000,100 --repeat 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CHILD = """
import contextlib, json, sys, time
from models import checkpoint
if sys.argv[2] == "initialize":  # the load as it was: the random init first, then the weights
    checkpoint._uninitialized = contextlib.nullcontext
import torch  # not timed: a replica imports it before the load
t, c = time.perf_counter(), time.process_time()
loaded = checkpoint.load_model(sys.argv[1])
print(json.dumps({"seconds": round(time.perf_counter() - t, 3), "cpu_s": round(time.process_time() - c, 3)}))
"""


def save_checkpoint(root: Path, buckets: list[int], preset: str) -> Path:
    from models.checkpoint import save_checkpoint as save
    from models.dlrm import build_dlrm

    path = root / f"{preset}-{'-'.join(map(str, buckets))}"
    if not (path / "batchscore.json").exists():
        model = build_dlrm(buckets=buckets, num_dense=8, preset=preset)
        arch = {"builtin": "dlrm", "preset": preset, "kwargs": {"buckets": buckets, "num_dense": 8}}
        save(str(path), model, version="bench", feature_spec=None, architecture=arch)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/model_load")
    ap.add_argument("--buckets", default="2000000,1000000,1000,100")
    ap.add_argument("--preset", default="dlrm-base")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    path = save_checkpoint(Path(args.root), [int(b) for b in args.buckets.split(",")], args.preset)
    for i in range(args.repeat):
        for mode in ("initialize", "skip"):  # alternating
            cmd = [sys.executable, "-c", CHILD, str(path), mode]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            print(mode, i + 1, out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
