"""`batchscore score CONFIG --date D | --start D1 --end D2` (also `python -m jobs.score ...`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.reporting.schema import RunReport


def score(
    config: str,
    overrides: list[str],
    args: argparse.Namespace,
    run_id: str | None = None,
    force: bool = False,
) -> RunReport:
    from jobs.common import resolve_dates
    from pipeline.config import load_config
    from pipeline.run.score import run_score

    cfg = load_config(config, overrides)
    dates = resolve_dates(args, cfg)
    report = run_score(cfg, dates, run_id=run_id, force=force)
    print_summary(report)
    return report


def print_summary(report: RunReport) -> None:
    """The terminal summary every run prints (the one `batchscore report` prints), then where to read."""
    from pipeline.reporting.summary import format_summary

    if report.skipped_committed:
        print(
            f"already committed with model {report.model.version} and this config, skipped: "
            f"{', '.join(report.skipped_committed)} (--force rescores)"
        )
    for date, why in report.rescored_because.items():
        if why != "not committed yet":  # a date scored again: say why
            print(f"rescoring {date}: {why}")
    if report.status == "skipped":
        print("nothing to do")
        return
    sys.stdout.write(format_summary(report, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    print(f"  report   {report.report_uri}")
    table = (report.config or {}).get("output", {}).get("uri")
    print(f"  read     deltalake.DeltaTable({table!r}).to_pyarrow_table()  (or polars, DuckDB)")


if __name__ == "__main__":  # `python -m jobs.score ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("score")
