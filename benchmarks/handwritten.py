"""The scoring script a user would write by hand, timed by `make bench` as a whole process.

One process, a loop over the shards: read a file -> transform -> predict in batches -> write.
It uses batchscore's checkpoint loader and feature transforms (the same model, the same
features) and nothing else of it: no Ray, no checks, no commit.

    python benchmarks/handwritten.py DATA MODEL OUT [--batch N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.checkpoint import load_model  # noqa: E402
from models.features import transform_table  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=65_536)
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_model(args.model)
    model, spec = loaded.module, loaded.meta.spec()
    n = 0
    for f in sorted(Path(args.data).rglob("*.parquet")):
        table = pq.read_table(f, columns=["event_id", *spec.columns])
        feats = transform_table(table, spec)
        scores = []
        with torch.inference_mode():
            for i in range(0, table.num_rows, args.batch):
                cat = torch.from_numpy(feats["cat"][i : i + args.batch])
                dense = torch.from_numpy(feats["dense"][i : i + args.batch])
                scores.append(model(cat, dense).numpy())
        result = pa.table({"event_id": table.column("event_id"), "score": np.concatenate(scores)})
        target = Path(args.out) / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(result, target)
        n += table.num_rows
    print(json.dumps({"rows": n, "loop_s": round(time.perf_counter() - t0, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
