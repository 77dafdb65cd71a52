"""`batchscore demo`: generate sample logs -> train the demo model -> score the last day.

No cluster and no cloud account: a local Ray, local files under --workdir, configs/demo.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEMO_START = "2026-11-01"


def demo(args: argparse.Namespace) -> dict:
    from types import SimpleNamespace

    from jobs.generate import generate
    from jobs.score import print_summary
    from jobs.synthetic import date_range
    from jobs.train import train
    from pipeline.config import load_config
    from pipeline.run.score import run_score

    work = os.path.abspath(args.workdir)
    data, model, preds = (os.path.join(work, x) for x in ("data", "model", "predictions"))
    dates = date_range(DEMO_START, args.days)
    train_dates, score_date = dates[:-1] or dates, dates[-1]

    print(f"[1/3] generating {args.days} days x {args.rows_per_day} rows into {data}")
    generate(
        SimpleNamespace(
            out=data,
            start=DEMO_START,
            days=args.days,
            rows_per_day=args.rows_per_day,
            shards_per_day=args.shards_per_day,
            seed=7,
            endpoint_url=None,
        )
    )
    print(f"[2/3] training the demo DLRM model on {', '.join(train_dates)}")
    train(
        SimpleNamespace(
            data=data,
            dates=train_dates,
            out=model,
            format="safetensors",
            epochs=args.epochs,
            preset="dlrm-demo",
            version="dlrm-demo-v1",
            endpoint_url=None,
        )
    )
    shown = DEMO_CONFIG.relative_to(Path.cwd()) if DEMO_CONFIG.is_relative_to(Path.cwd()) else DEMO_CONFIG
    print(f"[3/3] scoring {score_date} with {shown}")
    cfg = load_config(
        DEMO_CONFIG,
        [f"input.uri={data}", f"model.uri={model}", f"output.uri={preds}", *args.overrides],
    )
    report = run_score(cfg, [score_date])
    print_summary(report)

    _how_to_read(preds, score_date)
    return report


def _how_to_read(preds: str, score_date: str) -> None:
    """The table as a Delta reader sees it, and how to read it."""
    from deltalake import DeltaTable

    table = DeltaTable(str(preds))
    rows = table.to_pyarrow_table(columns=["ds"], filters=[("ds", "=", score_date)]).num_rows
    print(
        f"\npredictions: a Delta Lake table at {preds} (version {table.version()}, {score_date}: {rows} rows)"
    )
    print(
        "  read it:   python -c \"import deltalake; print(deltalake.DeltaTable('"
        + str(preds)
        + "').to_pandas())\""
    )
    print(f"             polars.read_delta('{preds}'); DuckDB: SELECT * FROM delta_scan('{preds}')")
    print(f"  versions:  .venv/bin/batchscore history {preds}")
    print(f"run report:  .venv/bin/batchscore report {preds}  (summary here, plots in report.html)")


def main() -> int:
    from jobs.cli import main as cli_main

    return cli_main(["demo", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
