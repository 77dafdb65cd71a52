"""The `batchscore` command. Imports are lazy so `--help` starts without torch or ray.

Exit codes: 0 success; 2 bad config, input or model (the message names the key, file or column);
3 score drift with drift.on_breach=fail; 4 another run committed a date first, with another model
or inputs; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

log = logging.getLogger("batchscore")

from jobs.common import exit_process  # noqa: E402 - light, no torch or ray
from pipeline.errors import EXIT_FAILED, EXIT_OK  # noqa: E402 - light, no torch or ray

EXIT_CODES_HELP = """exit codes:
  0  success (also: nothing to do, every date already committed)
  2  bad config, input or model: the message names the key, file or column
  3  scores drifted past the thresholds with drift.on_breach=fail (nothing published)
  4  another run committed a date first with another model or inputs
  8  the champion committed, a challenger failed (its model raised, or its rows did not reconcile)
  1  anything else"""

SCORE_OUTPUT_HELP = """output:
  predictions  a Delta Lake table at output.uri (read it with deltalake, polars or DuckDB)
  dead letters output.uri/_dead_letter (another Delta table)
  report       output.uri/_runs/RUN_ID/report.json and report.html
  stdout       a summary, then one JSON line: status, run id, report path, row counts"""


def package_version() -> str:
    """The installed distribution's version; from a source tree that is not installed (the
    Ray job's working_dir), pyproject's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchscore")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
        found = re.search(r'^version = "([^"]+)"', text, re.M)
        return found.group(1) if found else "unknown"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="job config (YAML), e.g. configs/demo.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set predict.batch_size=4096 (repeatable)",
    )


def _add_date_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dates (default: input.dates or input.start_date/end_date of the config)")
    g.add_argument(
        "--date",
        action="append",
        default=[],
        help="YYYY-MM-DD, 'today' or 'yesterday' (repeatable)",
    )
    g.add_argument("--start", help="first date of a range (inclusive)")
    g.add_argument("--end", help="last date of a range (inclusive)")


def _run_id(value: str) -> str:
    from pipeline.reporting.runs import bad_run_id

    why = bad_run_id(value)
    if why:
        raise argparse.ArgumentTypeError(why)
    return value


def _add_table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="the predictions table: a job's output.uri (local path or s3://)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for an s3:// OUTPUT")
    p.add_argument("--partition-column", default="ds", help="the date column (default: ds)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchscore",
        description="Offline batch scoring: Parquet (local or s3://) -> preprocess -> PyTorch\n"
        "(on Ray, or threads on one machine) -> a Delta Lake table, each date one transaction.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"batchscore {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_scoring_commands(sub)
    _add_cluster_commands(sub)
    _add_demo_commands(sub)
    _add_data_commands(sub)
    _add_table_commands(sub)
    return parser


def _add_scoring_commands(sub: argparse._SubParsersAction) -> None:
    """score and backfill: a config and its dates."""
    p = sub.add_parser(
        "score",
        help="score one date or a date range with a config",
        description="Score the dates of a config in one run. Each date is committed to the Delta "
        "table at output.uri as soon as its rows are written; dates already committed with this "
        "model, config and inputs are skipped (--force rescores). For a long range that may be "
        "stopped and resumed, or to preview what would run, see `batchscore backfill`.",
        epilog=SCORE_OUTPUT_HELP + "\n\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    _add_date_args(p)
    p.add_argument(
        "--run-id",
        type=_run_id,
        help="run id: letters, digits, '_' and '-'; one that already committed is refused "
        "(default: <name>-<utc time>-<random>)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rescore dates already committed with this model and config, and adopt nothing a killed run "
        "finished (a clean rescore from zero)",
    )

    p = sub.add_parser(
        "backfill",
        help="score a date range, skipping dates already committed",
        description="Like `score --start D1 --end D2`, for long ranges: lists what would run and "
        "what is already committed (--dry-run), and can split the range into several runs "
        "(--dates-per-run), so a stopped backfill resumes where it stopped. `score` with a range "
        "also skips committed dates, in one run.",
        epilog=SCORE_OUTPUT_HELP + "\n\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument("--start", required=True, help="first date (inclusive)")
    p.add_argument("--end", required=True, help="last date (inclusive)")
    p.add_argument("--date", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument(
        "--force",
        action="store_true",
        help="rescore dates already committed, and adopt nothing a killed run finished",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would run and what would be skipped")
    p.add_argument(
        "--dates-per-run",
        type=int,
        default=0,
        help="dates per streaming run (default 0: all in one run; each date is committed as soon as "
        "its rows are written either way)",
    )


def _add_cluster_commands(sub: argparse._SubParsersAction) -> None:
    """submit and validate: a config checked here, or run on a cluster."""
    p = sub.add_parser("submit", help="submit a score job to a Ray cluster (Ray Job API)")
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://HEAD:8265")
    _add_config_args(p)
    _add_date_args(p)
    p.add_argument("--no-wait", action="store_true", help="return at once with the submission id")
    p.add_argument(
        "--deps",
        choices=["pyproject", "none"],
        default="pyproject",
        help="pip-install pyproject's dependencies in the job's runtime env, or use the cluster's as is",
    )
    p.add_argument("--image", help="container image for the job (runtime_env image_uri) instead of pip")

    p = sub.add_parser("validate", help="check config, input schema and model without scoring")
    _add_config_args(p)
    _add_date_args(p)


def _add_demo_commands(sub: argparse._SubParsersAction) -> None:
    """demo: sample data, a built-in model and a scored table in one command."""
    p = sub.add_parser(
        "demo", help="generate sample data, train a demo model, score one date (--kind: which output)"
    )
    p.add_argument("--workdir", default="demo", help="where data, model and predictions go (default: demo)")
    p.add_argument(
        "--rows-per-day", type=int, default=50_000, help="synthetic rows per date (default: 50000)"
    )
    p.add_argument("--days", type=int, default=4, help="days generated; all but the last train the model")
    p.add_argument("--shards-per-day", type=int, default=4, help="Parquet files per date (default: 4)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the demo model (default: 2)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the demo's scoring config, e.g. --set predict.batch_size=4096",
    )
    p.add_argument(
        "--kind",
        choices=["scores", "heads", "embedding", "topk", "challenger"],
        default="scores",
        help="what to show: scores (the DLRM), heads (a two-head DLRM), embedding (a two-tower's user "
        "vectors), topk (each user's 10 best items), challenger (a second DLRM trained with another "
        "seed, scored beside the first in one pass and compared); each trains its model and writes "
        "its own table",
    )


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """train and generate: built-in models and synthetic data."""
    p = sub.add_parser(
        "train",
        help="train a built-in model (DLRM, its heads variant, a two-tower) on synthetic-schema Parquet",
    )
    p.add_argument("--data", required=True, help="dataset root (local or s3://), hive-partitioned by ds")
    p.add_argument("--dates", nargs="+", required=True, help="dates to train on")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--format",
        choices=["safetensors", "torchscript", "export"],
        default="safetensors",
        help="checkpoint format: safetensors weights + architecture record (default), TorchScript "
        "or torch.export",
    )
    p.add_argument("--epochs", type=int, default=2, help="passes over the training rows (default: 2)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="initial weights and shuffling (default: 0); another seed, a challenger",
    )
    p.add_argument(
        "--preset",
        default="dlrm-demo",
        help="dlrm-demo, dlrm-base (a click probability); heads (click and conversion, [N, 2]); "
        "two-tower (a user tower returning [N, 16] user vectors)",
    )
    p.add_argument("--version", help="model version (default: dlrm-<utc date>)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for --data")
    p.add_argument(
        "--register",
        metavar="NAME",
        help="also register the checkpoint as a new version of NAME in the MLflow model registry "
        "(MLFLOW_TRACKING_URI or --tracking-uri; pip install 'batchscore[mlflow]')",
    )
    p.add_argument("--alias", help="with --register: point this alias (e.g. champion) at the new version")
    p.add_argument("--tracking-uri", help="with --register: the MLflow server (default: MLFLOW_TRACKING_URI)")

    p = sub.add_parser("generate", help="write synthetic interaction logs (hive-partitioned Parquet)")
    p.add_argument("--out", required=True, help="dataset root (local or s3://)")
    p.add_argument("--start", default="2026-11-01", help="first date written (default: 2026-11-01)")
    p.add_argument("--days", type=int, default=4, help="consecutive dates written (default: 4)")
    p.add_argument("--rows-per-day", type=int, default=50_000, help="rows per date (default: 50000)")
    p.add_argument("--shards-per-day", type=int, default=4, help="Parquet files per date (default: 4)")
    p.add_argument("--seed", type=int, default=7, help="random seed: same seed, same data (default: 7)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for --out")


def _add_table_commands(sub: argparse._SubParsersAction) -> None:
    """report, vacuum, history and the references: reading what runs left."""
    p = sub.add_parser("report", help="print a run's report summary and write its HTML page")
    p.add_argument(
        "target",
        help="a report.json (path or s3:// URI), a run directory (OUTPUT/_runs/RUN_ID) "
        "or an output root (its latest run)",
    )
    p.add_argument(
        "--html",
        metavar="PATH",
        help="where to write the HTML page (default: report.html next to report.json; "
        "./report-RUN_ID.html when that is on S3 or not writable)",
    )
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for an s3:// TARGET or --html")
    p.add_argument("--json", action="store_true", help="print report.json instead of the summary table")

    p = sub.add_parser(
        "vacuum",
        help="delete replaced files, and dead runs' files and key records, older than the retention",
    )
    _add_table_args(p)
    p.add_argument(
        "--retain-hours",
        type=int,
        default=168,
        help="keep what readers of the last N hours need (default: 168, 7 days)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted")

    p = sub.add_parser("history", help="the table's commits: version, date, rows, model, run (time travel)")
    _add_table_args(p)
    p.add_argument("--limit", type=int, default=50, help="newest N commits (default: 50)")

    sub.add_parser("config-reference", help="print the config reference (docs/config.md) as Markdown")
    sub.add_parser(
        "report-reference", help="print the report.json reference (the generated part of docs/reports.md)"
    )


def _final_line(payload: dict) -> None:
    """Key figures as JSON on the last line of stdout, for schedulers."""
    print(json.dumps(payload, sort_keys=True), flush=True)


def cmd_submit(args: argparse.Namespace) -> int:
    from jobs.submit import submit

    result = submit(args)
    _final_line(result)
    return EXIT_OK if result.get("status") in ("SUCCEEDED", "PENDING", "RUNNING") else EXIT_FAILED


def _count_from_process_start() -> None:
    """A command whose run is the process's work: the report's first_batch_s counts the
    imports and Ray's start too, as a user timing the command sees them (not for `demo`, whose
    process first generates data and trains)."""
    from pipeline.run.clock import count_from_process_start

    count_from_process_start()


def cmd_backfill(args: argparse.Namespace) -> int:
    from jobs.backfill import backfill

    _count_from_process_start()

    summary = backfill(args)
    _final_line(summary)
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from jobs.score import score

    _count_from_process_start()

    report = score(args.config, args.overrides, args, run_id=args.run_id, force=args.force)
    _final_line(
        {
            "status": report.status,
            "run_id": report.run_id,
            "report": report.report_uri,
            "rows_in": report.rows.input,
            "rows_out": report.rows.output,
            "rows_dead_letter": report.rows.dead_letter,
            "dates": report.dates,
            "skipped_committed": report.skipped_committed,
            **({"challengers": {c.name: c.status for c in report.challengers}} if report.challengers else {}),
        }
    )
    if report.challengers:  # the champion's dates are committed; a failed challenger exits 8
        from pipeline.run.challengers import raise_for_challengers

        raise_for_challengers(report)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from jobs.report import report

    _final_line(report(args))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from jobs.validate import validate

    validate(args.config, args.overrides, args)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.demo import demo

    demo(args)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from jobs.train import train
    from pipeline.errors import ConfigError

    if args.alias and not args.register:
        raise ConfigError("--alias needs --register NAME")

    train(args)
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from jobs.generate import generate

    generate(args)
    return EXIT_OK


def cmd_vacuum(args: argparse.Namespace) -> int:
    from jobs.tables import vacuum

    _final_line(vacuum(args))
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    from jobs.tables import history

    _final_line(history(args))
    return EXIT_OK


def cmd_config_reference(args: argparse.Namespace) -> int:
    from pipeline.config import reference_markdown

    sys.stdout.write(reference_markdown())
    return EXIT_OK


def cmd_report_reference(args: argparse.Namespace) -> int:
    from pipeline.reporting.schema import reference_markdown

    sys.stdout.write(reference_markdown())
    return EXIT_OK


COMMANDS = {
    "backfill": cmd_backfill,
    "config-reference": cmd_config_reference,
    "report-reference": cmd_report_reference,
    "history": cmd_history,
    "vacuum": cmd_vacuum,
    "report": cmd_report,
    "score": cmd_score,
    "submit": cmd_submit,
    "validate": cmd_validate,
    "demo": cmd_demo,
    "train": cmd_train,
    "generate": cmd_generate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from pipeline.errors import exit_code_of, known_error_types

    try:
        return COMMANDS[args.command](args)
    except known_error_types() as e:
        print(f"batchscore {args.command}: error: {e}", file=sys.stderr)
        if getattr(e, "abandoned", False):  # a worker is blocked for good: see end_abandoned
            end_abandoned(exit_code_of(e))
        return exit_code_of(e)
    except KeyboardInterrupt:
        print(f"batchscore {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        log.exception("batchscore %s failed", args.command)
        return EXIT_FAILED


def end_abandoned(code: int, ray_grace_s: float = 10.0) -> NoReturn:
    """End the process of a run the watchdog stopped while a worker stayed blocked (in user code:
    pipeline/run/watchdog.py). A normal exit would wait on that thread or on Ray's shutdown behind
    it; so Ray is shut down on a thread given `ray_grace_s` (it stops a local Ray's processes; a
    cluster ends the job's workers with their driver either way), then the process ends at once.
    The report and the error message are written by then."""
    import threading

    def shutdown() -> None:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()

    t = threading.Thread(target=shutdown, name="batchscore-ray-shutdown", daemon=True)
    t.start()
    t.join(ray_grace_s)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def console() -> NoReturn:
    """The `batchscore` command (pyproject's entry point): `main`, then `exit_process`."""
    exit_process(main())


def run_as(*command: str) -> NoReturn:
    """`python -m jobs.score ARGS` (a subcommand module run as a program, as Ray job entrypoints
    do) is `batchscore score ARGS`: the same parser, error messages and exit codes. Called only
    from a subcommand's `__main__` block, so importing the subcommand never imports this module."""
    exit_process(main([*command, *sys.argv[1:]]))


if __name__ == "__main__":
    exit_process(main())
