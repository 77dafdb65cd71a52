"""The one-GPU scoring loop a user writes by hand (timed by benchmarks/gpu_bench.py as a whole
process): for each file, read -> the numpy preprocessing -> batches to the GPU -> forward ->
scores back -> write. One process, no Ray, no checks, no commit.

    python benchmarks/gpu_loop.py DATA MODEL OUT [--batch N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from userdlrm import CATEGORICAL, DENSE, FreeModel, UserDLRM, preprocess  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("model", help="the safetensors weights of userdlrm.UserDLRM")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--free", action="store_true", help="userdlrm.FreeModel (weights: its own)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = FreeModel() if args.free else UserDLRM()
    model.load_state_dict(load_file(args.model))
    model = model.eval().to(device)
    n = 0
    for f in sorted(Path(args.data).rglob("*.parquet")):
        table = pq.read_table(f, columns=["id", *DENSE, *CATEGORICAL])
        feats = preprocess(table)
        scores = []
        with torch.inference_mode():
            for i in range(0, table.num_rows, args.batch):
                dense = torch.from_numpy(feats["dense"][i : i + args.batch]).to(device)
                cat = torch.from_numpy(feats["cat"][i : i + args.batch]).to(device)
                scores.append(model(dense, cat).cpu().numpy())
        result = pa.table({"id": table.column("id"), "score": np.concatenate(scores)})
        target = Path(args.out) / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(result, target)
        n += table.num_rows
    print(json.dumps({"rows": n, "loop_s": round(time.perf_counter() - t0, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
