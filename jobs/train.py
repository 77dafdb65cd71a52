"""`batchscore train --data URI --dates D... --out CKPT`: train the built-in DLRM model.

Reads the training dates with pyarrow, applies `models.features.transform_table` (the code the
scoring job runs, split there between CPU tasks and the replicas' device), trains, reports
held-out AUC and writes a checkpoint with the fitted feature spec.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from typing import Any

log = logging.getLogger("batchscore")


def load_training_table(data_uri: str, dates: list[str], endpoint_url: str | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.synthetic import FEATURES, LABEL
    from pipeline.config import StorageConfig
    from pipeline.stages.read import discover
    from pipeline.storage import resolve

    root = resolve(data_uri, StorageConfig(endpoint_url=endpoint_url))
    plan = discover(root, dates)
    columns = [*FEATURES.columns, LABEL]
    tables = []
    for f in (f for p in plan.partitions for f in p.files):
        with root.fs.open_input_file(f.path) as fh:
            tables.append(pq.read_table(fh, columns=columns))
    return pa.concat_tables(tables)


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from jobs.synthetic import FEATURES, LABEL
    from models.checkpoint import save_checkpoint
    from models.training import train_dlrm

    table = load_training_table(args.data, args.dates, getattr(args, "endpoint_url", None))
    log.info("training on %d rows of %s (%s)", table.num_rows, args.data, ", ".join(args.dates))
    result = train_dlrm(table, FEATURES, LABEL, preset=args.preset, epochs=args.epochs)
    version = args.version or f"dlrm-{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}"
    example = None
    if args.format != "safetensors":
        n = 4
        example = (
            torch.zeros((n, len(result.spec.categorical)), dtype=torch.int64),
            torch.zeros((n, len(result.spec.dense)), dtype=torch.float32),
        )
    meta = save_checkpoint(
        args.out,
        result.model,
        format=args.format,
        version=version,
        feature_spec=result.spec,
        architecture=result.architecture,
        example_inputs=example,
        metrics=result.metrics,
        score_reference=result.score_reference,
    )
    print(
        f"trained {version} on {result.metrics['train_rows']} rows: held-out AUC "
        f"{result.metrics['holdout_auc']:.4f} ({result.metrics['holdout_rows']} rows); "
        f"checkpoint {args.out} ({meta.format}, sha256 {meta.sha256[:12]}…)"
    )
    return result.metrics


def main() -> int:
    from jobs.cli import main as cli_main

    return cli_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
