"""A model's load, as a replica does it (`models.checkpoint.load_model` of a safetensors
checkpoint), each load in a fresh process, alternating: with its layers' random initialization
skipped (what batchscore does) and, for comparison, with it run first as before ("initialize").
The model is the built-in dlrm (`--buckets`, `--preset`) or, with `--class`, a user's class by
import path (benchmarks/userdlrm.py's UserDLRM with `--class-buckets` rows in each of its tables).

    python benchmarks/model_load.py --root /tmp/model_load --buckets 2000000,1000000,1000,100 --repeat 3
    python benchmarks/model_load.py --root /tmp/model_load --class userdlrm:UserDLRM --class-buckets 1000000
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
sys.path.insert(0, sys.argv[3])  # benchmarks/: userdlrm
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


def save_class_checkpoint(root: Path, class_path: str, buckets: int) -> Path:
    """A bare-metadata checkpoint of a class by import path (from benchmarks/), its kwargs
    `buckets`, with the weights of a build initialized as for training."""
    from models.checkpoint import build_architecture
    from models.checkpoint import save_checkpoint as save

    path = root / f"{class_path.replace(':', '.')}-{buckets}"
    if not (path / "batchscore.json").exists():
        arch = {"class": class_path, "kwargs": {"buckets": buckets}}
        model = build_architecture(arch)
        save(str(path), model, version="bench", feature_spec=None, architecture=arch, inputs=["dense", "cat"])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/model_load")
    ap.add_argument("--buckets", default="2000000,1000000,1000,100")
    ap.add_argument("--preset", default="dlrm-base")
    ap.add_argument("--class", dest="class_path", help="a model by import path from benchmarks/ instead")
    ap.add_argument("--class-buckets", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    if args.class_path:
        path = save_class_checkpoint(Path(args.root), args.class_path, args.class_buckets)
    else:
        path = save_checkpoint(Path(args.root), [int(b) for b in args.buckets.split(",")], args.preset)
    for i in range(args.repeat):
        for mode in ("initialize", "skip"):  # alternating
            cmd = [sys.executable, "-c", CHILD, str(path), mode, str(HERE)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            print(mode, i + 1, out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
