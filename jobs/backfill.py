"""`batchscore backfill CONFIG --start D1 --end D2`: score a range of dates.

Dates already committed with the same model (sha256), scoring config and input files are skipped
unless `--force` (read from the Delta log). The rest are scored in one streaming run (or runs of
`--dates-per-run` dates), and each date is committed as soon as all of its rows are written,
while the run goes on; a backfill killed halfway and started again redoes only what is not
committed.
"""

from __future__ import annotations

import argparse
from typing import Any


def backfill(args: argparse.Namespace) -> dict[str, Any]:
    from jobs.common import resolve_dates
    from jobs.score import print_summary
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.run.preflight import plan_dates
    from pipeline.run.score import run_score
    from pipeline.stages.predict import ModelSource

    if args.dates_per_run < 0:
        raise ConfigError("--dates-per-run must be >= 0 (0: all dates in one run)")
    cfg = load_config(args.config, args.overrides)
    dates = resolve_dates(args, cfg)
    meta = ModelSource.from_config(cfg).inspect()[0]
    dp = plan_dates(cfg, dates, meta, force=args.force)
    todo, done = dp.todo, dp.done
    if cfg.challengers:  # a date a challenger lacks is scored too (the champion's replaced alike)
        from pipeline.run.challengers import ChallengerSet

        lacking = ChallengerSet.plan(cfg, dates, args.force).needed()
        todo = [d for d in dates if d in set(todo) | lacking]
        done = [d for d in done if d not in lacking]
    pinned = f" from {meta.registry.described()}" if meta.registry is not None else ""
    print(
        f"backfill {cfg.name}: {len(dates)} dates, model {meta.version} (sha256 {meta.sha256[:12]}…){pinned}"
    )
    print(f"  to score ({len(todo)}): {', '.join(todo) or '-'}")
    print(f"  already committed, skipped ({len(done)}): {', '.join(done) or '-'}")
    for d, why in dp.why.items():
        print(f"  {d}: {why}")
    summary: dict[str, Any] = {
        "status": "dry-run" if args.dry_run else "succeeded",
        "to_score": todo,
        "skipped_committed": done,
        "why": dp.why,
        "runs": [],
    }
    if args.dry_run:
        return summary
    size = args.dates_per_run or max(1, len(todo))
    reports = []
    for i in range(0, len(todo), size):
        chunk = todo[i : i + size]
        runs = -(-len(todo) // size)
        print(f"[{i // size + 1}/{runs}] scoring {', '.join(chunk)}")
        report = run_score(cfg, chunk, force=args.force)
        print_summary(report)
        summary["runs"].append({"run_id": report.run_id, "dates": report.dates, "report": report.report_uri})
        reports.append(report)
    if cfg.challengers:  # every chunk ran; a failed challenger exits 8 (the champion's dates stand)
        from pipeline.run.challengers import raise_for_challengers

        for report in reports:
            raise_for_challengers(report)
    return summary


if __name__ == "__main__":  # `python -m jobs.backfill ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("backfill")
