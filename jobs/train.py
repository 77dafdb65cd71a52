"""`batchscore train --data URI --dates D... --out CKPT [--preset P]`: train a built-in model.

Presets: `dlrm-demo`, `dlrm-base` (one click probability, [N]), `heads` (click and conversion,
[N, 2]: score with `output.score_columns: [p_click, p_convert]`), `two-tower` (a user tower that
returns [N, 16] user vectors: score with `output.kind: embedding`).

Reads the training dates with pyarrow, applies `models.features.transform_table` (the code the
scoring job runs, split there between CPU tasks and the replicas' device), trains, reports
held-out AUC and writes a checkpoint with the fitted feature spec.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
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

    from jobs.synthetic import FEATURES, LABEL, head_labels, tower_features
    from models.checkpoint import save_checkpoint
    from models.dlrm import PRESETS
    from models.training import train_dlrm

    if args.preset not in PRESETS:
        from pipeline.errors import UserError

        raise UserError(f"--preset {args.preset!r}: unknown; known: {sorted(PRESETS)}")
    table = load_training_table(args.data, args.dates, getattr(args, "endpoint_url", None))
    log.info("training on %d rows of %s (%s)", table.num_rows, args.data, ", ".join(args.dates))
    result = train_dlrm(
        table,
        FEATURES,
        LABEL,
        preset=args.preset,
        epochs=args.epochs,
        head_labels=head_labels(table) if args.preset == "heads" else None,
        model_kwargs=tower_features(FEATURES) if args.preset == "two-tower" else None,
        seed=getattr(args, "seed", 0),
    )
    prefix = "dlrm" if args.preset.startswith("dlrm") else args.preset
    version = args.version or f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}"
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
        score_references=result.score_references,
    )
    print(
        f"trained {version} on {result.metrics['train_rows']} rows: held-out AUC "
        f"{result.metrics['holdout_auc']:.4f} ({result.metrics['holdout_rows']} rows); "
        f"checkpoint {args.out} ({meta.format}, sha256 {meta.sha256[:12]}…)"
    )
    if getattr(args, "register", None):
        register_trained(args, meta)
    return result.metrics


def register_trained(args: argparse.Namespace, meta: Any) -> str:
    """The checkpoint as a new version of `--register NAME` in the MLflow registry."""
    from models.registry import register

    numbers = {k: v for k, v in meta.metrics.items() if isinstance(v, int | float)}
    registered = register(
        args.out,
        args.register,
        alias=args.alias,
        tracking_uri=args.tracking_uri,
        tags={"batchscore.version": meta.version, "batchscore.sha256": meta.sha256},
        metrics=numbers,
    )
    uri = f"models:/{args.register}@{args.alias}" if args.alias else f"models:/{args.register}/{registered}"
    print(f"registered models:/{args.register}/{registered}; score it with model.uri: {uri}")
    return registered


if __name__ == "__main__":  # `python -m jobs.train ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("train")
