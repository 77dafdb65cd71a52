"""Where one core's time goes per stage, on the `make bench` data (run `make bench` first).

Times each piece of the per-file work in one process, one torch thread, over the first files of
bench-data: Parquet read, batchscore's Preprocessor, the forward pass (1 and all threads), the
Predictor stage (tensor handling and output columns included), the Parquet write, and the commit's
key fingerprints. Prints seconds per 1 M rows for each: the CPU budget a row costs on this machine.

    python benchmarks/profile_stages.py [--root bench-data] [--files 4]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow.fs as pafs  # noqa: E402
from common import best_of  # noqa: E402

from models.checkpoint import load_model  # noqa: E402
from pipeline.config import config_from_dict  # noqa: E402
from pipeline.keys import _file_fingerprint
from pipeline.stages.predict import ModelSource, Predictor
from pipeline.stages.preprocess import Preprocessor


def main() -> int:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="bench-data")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--batch", type=int, default=65_536)
    args = ap.parse_args()
    root = Path(args.root)
    files = sorted((root / "data").rglob("*.parquet"))[: args.files]
    if not files:
        print(f"no data under {root}/data: run `make bench` first", file=sys.stderr)
        return 2
    model_dir = str(root / "model")
    spec = load_model(model_dir).meta.spec()
    columns = ["event_id", *spec.columns]
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    n = table.num_rows
    batches = [table.slice(i, args.batch) for i in range(0, n, args.batch)]
    torch.set_num_threads(1)
    pre = Preprocessor(
        spec, ["event_id"], key_columns=["event_id"], device_transforms=True
    )  # as the pipeline
    cfg = config_from_dict(
        {
            "name": "p",
            "input": {"uri": "/tmp"},
            "model": {"uri": model_dir},
            "output": {"uri": "/tmp", "key_columns": ["event_id"]},
        }
    )
    predictor = Predictor(ModelSource.from_config(cfg), ["event_id"], "profile", num_threads=1)
    feats = [pre(b) for b in batches]
    module = predictor.model
    tensors = [
        (
            torch.from_numpy(f.column("cat").combine_chunks().to_numpy().copy()),
            torch.from_numpy(f.column("dense").combine_chunks().to_numpy().copy()),
        )
        for f in feats
    ]

    def forward():
        with torch.inference_mode():
            for cat, dense in tensors:
                module(cat, dense)

    out = pa.concat_tables([predictor(f) for f in feats])
    local = pafs.LocalFileSystem()
    rows = {
        "read Parquet (needed columns)": best_of(lambda: [pq.read_table(f, columns=columns) for f in files]),
        "preprocess (Preprocessor: checks + transforms)": best_of(lambda: [pre(b) for b in batches]),
        "forward pass, 1 thread": best_of(forward),
        "Predictor stage, 1 thread (forward + tensors + output columns)": best_of(
            lambda: [predictor(f) for f in feats]
        ),
        "write Parquet (zstd)": best_of(
            lambda: pq.write_table(out, "/tmp/profile-out.parquet", compression="zstd")
        ),
        "key fingerprints for the commit (read keys + hash), one file set": best_of(
            lambda: [_file_fingerprint(local, str(f), ["event_id"]) for f in files]
        ),
    }
    torch.set_num_threads(os.cpu_count() or 1)
    threads = best_of(forward)
    print(f"{n:,} rows from {len(files)} files of {root}/data; seconds per 1 M rows (best of 3)\n")
    print("| piece | s per 1 M rows (one core) |\n| --- | ---: |")
    for name, s in rows.items():
        print(f"| {name} | {s / n * 1e6:.3f} |")
    print(f"| forward pass, {os.cpu_count()} threads (wall) | {threads / n * 1e6:.3f} |")
    per_row = sum(s for k, s in rows.items() if not k.startswith(("forward", "key"))) / n * 1e6
    fingerprints = 2 * rows["key fingerprints for the commit (read keys + hash), one file set"] / n * 1e6
    print(f"\none core, read + preprocess + Predictor + write: {per_row:.3f} s per 1 M rows")
    print(f"plus the commit's fingerprints of input and output: {per_row + fingerprints:.3f} s per 1 M rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
