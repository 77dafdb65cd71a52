"""Feature transforms, rows/s on one core: the numpy path they replaced vs the CPU/device split.

On one batch of the demo's data and feature spec (jobs/synthetic.py, spec fitted on the batch),
best of --repeat, one torch thread:

- numpy (before): the old numpy `transform_table` (frozen copy in tests/feature_parity.py), what a
  CPU preprocessing task computed per row until now;
- encode (CPU half): `models.features.encode_table`, what a CPU preprocessing task computes now;
- stack: `models.features.stack_encoded`, the feature-major copy the replica makes before the
  transform (into pinned memory on a GPU);
- torch on CPU: `FeatureTransform` on the CPU (CPU-only replicas, training);
- encode + torch on CPU: `transform_table`, the whole path on a CPU-only machine;
- torch on CUDA (when there is a GPU): host-to-device copy of the encoded arrays + `FeatureTransform`
  on the GPU, synchronized;
- the preprocess stage as a CPU task runs it (`Preprocessor`, dead-letter checks and output
  columns included, batches of --batch rows): before (numpy transforms, tensor columns) and now
  (encoded plain columns). The figure that sizes the CPUs feeding a GPU.

    python benchmarks/transforms.py [--rows 1000000] [--repeat 3] [--batch 65536]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from common import best_of  # noqa: E402
from feature_parity import transform_table as numpy_transform_table  # noqa: E402

from jobs.synthetic import FEATURES, SyntheticSpec, generate_day  # noqa: E402
from models.features import encode_table, fit_dense_stats, stack_encoded, transform_table  # noqa: E402
from models.transforms import FeatureTransform, from_numpy  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=65_536)
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = generate_day("2026-10-01", SyntheticSpec(rows_per_day=args.rows))
    spec = fit_dense_stats(table, FEATURES)
    encoded = encode_table(table, spec)
    cpu = FeatureTransform(spec)
    inputs = [from_numpy(a) for a in stack_encoded(encoded, spec)]

    def torch_cpu():
        with torch.inference_mode():
            cpu(*inputs)

    runs = {
        "numpy transform_table (before)": lambda: numpy_transform_table(table, spec),
        "encode_table (CPU half, now in preprocessing)": lambda: encode_table(table, spec),
        "stack_encoded (feature-major copy, in the replica)": lambda: stack_encoded(encoded, spec),
        "FeatureTransform on CPU (torch half)": torch_cpu,
        "transform_table = encode + torch on CPU": lambda: transform_table(table, spec),
    }
    if torch.cuda.is_available():
        gpu = FeatureTransform(spec, "cuda:0")
        pinned = [t.pin_memory() for t in inputs]

        def torch_cuda():
            with torch.inference_mode():
                gpu(*(t.to("cuda:0", non_blocking=True) for t in pinned))
            torch.cuda.synchronize()

        torch_cuda()  # CUDA context and kernels warmed up outside the timing
        runs["FeatureTransform on CUDA (with host-to-device copy)"] = torch_cuda
    c, d = len(spec.categorical), len(spec.dense)
    print(f"{args.rows:,} rows, demo feature spec ({c} categorical, {d} dense)")
    import pyarrow as pa

    import pipeline.stages.preprocess as preprocess

    staged = table.append_column("ds", pa.array(["2026-10-01"] * table.num_rows))
    batches = [staged.slice(i, args.batch) for i in range(0, staged.num_rows, args.batch)]
    before = preprocess.Preprocessor(spec, ["event_id", "ds"], key_columns=["event_id"])
    now = preprocess.Preprocessor(spec, ["event_id", "ds"], key_columns=["event_id"], device_transforms=True)

    def stage_before():
        real = preprocess.transform_table
        preprocess.transform_table = numpy_transform_table  # the stage as it was
        try:
            [before(b) for b in batches]
        finally:
            preprocess.transform_table = real

    runs["Preprocessor stage before (numpy, tensor columns)"] = stage_before
    runs["Preprocessor stage now (encoded plain columns)"] = lambda: [now(b) for b in batches]
    print(
        f"torch {torch.__version__}, 1 torch thread, best of {args.repeat}, stage batches of {args.batch:,}"
    )
    for name, fn in runs.items():
        s = best_of(fn, args.repeat)
        print(f"{name:55s} {s:8.3f} s  {args.rows / s / 1e6:7.2f} M rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
