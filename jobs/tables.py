"""`batchscore vacuum OUTPUT` and `batchscore history OUTPUT`: the predictions as Delta tables.

vacuum: delete files that no reader of the last --retain-hours needs (replaced or removed files,
and files of runs that died before committing, once that old), in the predictions table and its
dead-letter table, and the key records such runs left (_runs/RUN/input_keys), once that old.
history: each date's commits with their table versions, for time travel.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_RETAIN_HOURS = 168
# what vacuum_tables deletes, by key: the two tables' files, and the key records of killed runs
VACUUMED = {
    "predictions": "file(s)",
    "dead_letters": "file(s)",
    "input_keys": "key-record folder(s) of killed runs (_runs/RUN/input_keys)",
}


def _tables(output: str, endpoint_url: str | None, partition_column: str):
    from pipeline.commit.tables import DEAD_LETTER_TABLE, DeltaOutput, OutputTables
    from pipeline.config import StorageConfig
    from pipeline.storage import resolve

    storage = StorageConfig(endpoint_url=endpoint_url)
    loc = resolve(output, storage)
    preds = DeltaOutput(loc, storage, [partition_column])
    if preds.open() is None:
        from pipeline.errors import InputError

        raise InputError(f"{output}: not a Delta table (no _delta_log); give the output.uri of a job")
    return OutputTables(
        preds, DeltaOutput(loc.join(DEAD_LETTER_TABLE), storage, [partition_column]), partition_column
    )


def vacuum(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.commit.tables import vacuum_tables

    if args.retain_hours < 0:
        from pipeline.errors import ConfigError

        raise ConfigError("--retain-hours must be >= 0")
    if args.retain_hours < 1:
        print(
            "warning: --retain-hours below 1 also deletes the files of runs still scoring now; "
            "their commits would then fail",
            file=sys.stderr,
        )
    tables = _tables(args.output, args.endpoint_url, args.partition_column)
    result = vacuum_tables(tables, args.retain_hours, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for name, what in VACUUMED.items():
        print(f"{name}: {verb} {len(result[name])} {what} older than {args.retain_hours} h")
        for path in result[name][:20]:
            print(f"  {path}")
    return {name: len(result[name]) for name in VACUUMED} | {"dry_run": args.dry_run}


def history(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.commit.tables import commits_of_history

    tables = _tables(args.output, args.endpoint_url, args.partition_column)
    commits = commits_of_history(tables.predictions.open(), args.limit)
    print(f"{'version':>7}  {'date':10}  {'rows':>10}  {'model':24}  run")
    for c in commits:
        print(
            f"{c['version']:>7}  {c.get('date', '?'):10}  {c.get('output_rows', 0):>10}  "
            f"{str(c.get('model_version', '(withdrawn)' if c.get('withdrawn') else ''))[:24]:24}  "
            f"{c.get('run_id', '')}"
        )
    print(
        "read a version: deltalake.DeltaTable(URI, version=V).to_pyarrow_table() or "
        "polars.read_delta(URI, version=V)"
    )
    return {"commits": len(commits)}


if __name__ == "__main__":  # `python -m jobs.tables vacuum|history ARGS`: the program above the module
    from jobs.cli import run_as

    run_as()
