"""The plain Ray Data pattern from Ray's batch inference docs (timed by benchmarks/gpu_bench.py as
a whole process): read_parquet -> map_batches(preprocess) on CPU tasks -> map_batches(a model
class, one actor with num_gpus=1 when there is a GPU) -> write_parquet. No checks, no commit.

    python benchmarks/raydata_pattern.py DATA MODEL OUT [--batch N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from userdlrm import CATEGORICAL, DENSE, UserDLRM, preprocess  # noqa: E402


class Scorer:
    def __init__(self, weights: str) -> None:
        import torch
        from safetensors.torch import load_file

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = UserDLRM()
        model.load_state_dict(load_file(weights))
        self.model = model.eval().to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            dense = torch.from_numpy(np.ascontiguousarray(batch["dense"])).to(self.device)
            cat = torch.from_numpy(np.ascontiguousarray(batch["cat"])).to(self.device)
            return {"id": batch["id"], "score": self.model(dense, cat).cpu().numpy()}


def features(batch):
    return {"id": batch.column("id").to_numpy(), **preprocess(batch)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=65_536)
    args = ap.parse_args()
    t0 = time.perf_counter()
    import ray
    import torch
    from ray.data import ActorPoolStrategy

    ray.init(address="local", include_dashboard=False, logging_level="WARNING")  # a Ray of its own
    gpus = 1 if torch.cuda.is_available() else 0
    ds = ray.data.read_parquet(args.data, columns=["id", *DENSE, *CATEGORICAL])
    ds = ds.map_batches(features, batch_format="pyarrow", batch_size=args.batch)
    ds = ds.map_batches(
        Scorer,
        fn_constructor_args=(args.model,),
        compute=ActorPoolStrategy(size=1),
        num_gpus=gpus,
        batch_size=args.batch,
    )
    ds.write_parquet(args.out)
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(f).num_rows for f in Path(args.out).rglob("*.parquet"))
    print(json.dumps({"rows": rows, "loop_s": round(time.perf_counter() - t0, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
