"""Micro-benchmarks behind two changes of the local runner (benchmarks/RESULTS.md):

forward   forward passes of the bench model over one transformed file: one thread, two threads
          of this process at once, each with one torch thread; before and after glibc is told
          to keep freed memory (`keep_freed_memory`, which cannot be undone in a process, so
          the "before" figures come from a child process)
hash      FNV-1a of 125,000 equal-length ids: the strided path against the general loop

  python benchmarks/micro.py [--root bench-data]   (after `make bench` made ROOT's data and model)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def forward(root: Path, batch: int, keep_freed: bool) -> dict:
    import pyarrow.parquet as pq
    import torch

    from models.checkpoint import load_model
    from models.features import transform_table
    from pipeline.stages.predict import keep_freed_memory

    if keep_freed:
        keep_freed_memory()
    torch.set_num_threads(1)
    loaded = load_model(str(root / "model"))
    model, spec = loaded.module, loaded.meta.spec()
    table = pq.read_table(sorted((root / "data").rglob("*.parquet"))[0])
    feats = transform_table(table.slice(0, batch), spec)
    cat, dense = torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"])

    def run(reps: int) -> None:
        with torch.inference_mode():
            for _ in range(reps):
                model(cat, dense)

    run(2)
    t0 = time.perf_counter()
    run(10)
    one = 10 * batch / (time.perf_counter() - t0)
    threads = [threading.Thread(target=run, args=(10,)) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    two = 20 * batch / (time.perf_counter() - t0)
    return {
        "keep_freed_memory": keep_freed,
        "one_thread_rows_per_s": round(one),
        "two_threads_rows_per_s": round(two),
    }


def hashes() -> dict:
    import numpy as np
    import pyarrow as pa

    from models.features import _fnv1a_strings

    ids = pa.array([f"2026-10-01-{i:06d}" for i in range(125_000)])
    general = pa.array(ids.to_pylist() + ["x"])  # one value of another length: the general loop

    def best(arr) -> float:
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            _fnv1a_strings(arr)
            times.append(time.perf_counter() - t0)
        return min(times)

    same = bool(np.array_equal(_fnv1a_strings(ids), _fnv1a_strings(general)[:-1]))
    return {
        "values": len(ids),
        "strided_ms": round(best(ids) * 1e3, 2),
        "general_loop_ms": round(best(general) * 1e3, 2),
        "equal": same,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="bench-data")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.root).resolve()
    if args.child:
        print(json.dumps(forward(root, args.batch, args.child == "after")))
        return 0
    runs = []
    for which in ("before", "after"):
        cmd = [sys.executable, __file__, "--root", str(root), "--batch", str(args.batch), "--child", which]
        runs.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    print(json.dumps({"forward": runs, "hash": hashes()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
