"""What the `batchscore` subcommands share (date resolution, the process's exit), below them and
below jobs/cli, which imports every subcommand: a subcommand that imported jobs/cli for these
would close an import circle. Light: no torch or ray."""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from pipeline.config import JobConfig


def resolve_dates(args: argparse.Namespace, cfg: JobConfig) -> list[str]:
    """Dates from the command line, else from the config. Errors name the argument."""
    from zoneinfo import ZoneInfo

    from pipeline.config import parse_date
    from pipeline.errors import ConfigError

    def one(value: str, what: str) -> dt.date:
        today = dt.datetime.now(ZoneInfo(cfg.input.timezone)).date()
        if value == "today":
            return today
        if value == "yesterday":
            return today - dt.timedelta(days=1)
        try:
            return parse_date(value)
        except ValueError as e:
            raise ConfigError(f"{what}: {e}") from None

    def span(a: dt.date, b: dt.date, what: str) -> list[str]:
        if b < a:
            raise ConfigError(f"{what}: end {b} is before start {a}")
        return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]

    dates = [one(d, "--date").isoformat() for d in args.date]
    if args.start or args.end:
        if not (args.start and args.end):
            raise ConfigError("--start and --end go together")
        dates += span(one(args.start, "--start"), one(args.end, "--end"), "--start/--end")
    if not dates:
        inp = cfg.input
        dates = list(inp.dates or [])
        if inp.start_date or inp.end_date:
            if not (inp.start_date and inp.end_date):
                raise ConfigError("input.start_date and input.end_date go together")
            dates += span(parse_date(inp.start_date), parse_date(inp.end_date), "input.start_date/end_date")
    if not dates:
        raise ConfigError("no dates: give --date or --start/--end, or input.dates in the config")
    return sorted(dict.fromkeys(dates))


def exit_process(code: int) -> NoReturn:
    """End a command's process with `code`, skipping the interpreter's last full garbage
    collection: after a scoring run it walks the ~200 k objects of torch, pyarrow and the run
    (measured 0.4-0.8 s of a 9 s, 4 M-row run on 2 CPUs). Everything the command wrote is closed
    by then; at exit, stdout is flushed and logging shut down as before, only unreachable
    cycles are left to the operating system with the rest of the process. Ray, when this process
    started or joined it, is shut down first (`shutdown_ray`)."""
    gc.freeze()
    shutdown_ray()
    sys.exit(code)


def shutdown_ray() -> None:
    """Shut down the Ray this process started or joined, now instead of at interpreter exit. Why:
    Ray's own shutdown at exit sleeps 0.5 s first, for its workers' last log lines to reach the
    driver's console (ray/_private/worker.py `shutdown`); measured here, 0.5 of the 0.9 s between
    a run's report and its process's end, with every CPU idle. The command's output, its report
    and every worker's result are in by then; a worker's log line still in flight stays in
    Ray's session logs. A Ray of our own loses its autoscaler monitor first, as at exit
    (pipeline/run/execute.py)."""
    if "ray" not in sys.modules:  # the local runner and most commands never import it
        return
    import ray

    if not ray.is_initialized():
        return
    from pipeline.run.execute import kill_autoscaler_monitor

    kill_autoscaler_monitor()
    ray.shutdown()
