"""`batchscore generate --out URI`: synthetic interaction logs, hive-partitioned by ds."""

from __future__ import annotations

import argparse


def generate(args: argparse.Namespace) -> dict[str, int]:
    from jobs.synthetic import SyntheticSpec, date_range, write_days
    from pipeline.config import StorageConfig
    from pipeline.storage import resolve

    root = resolve(args.out, StorageConfig(endpoint_url=args.endpoint_url))
    spec = SyntheticSpec(rows_per_day=args.rows_per_day, shards_per_day=args.shards_per_day, seed=args.seed)
    counts = write_days(root, date_range(args.start, args.days), spec)
    for d, n in counts.items():
        print(f"{root.uri}/ds={d}: {n} rows in {spec.shards_per_day} files")
    return counts


if __name__ == "__main__":  # `python -m jobs.generate ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("generate")
