"""`batchscore report TARGET [--html PATH] [--endpoint-url URL] [--json]`: read a run report, print a
summary table and write the HTML page.

TARGET is a report.json (local path or s3:// URI), a run directory (OUTPUT/_runs/RUN_ID) or an
output root (the latest run under OUTPUT/_runs/ by the reports' `finished_at`, then by name).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any

from pipeline.errors import UserError
from pipeline.reporting.runs import REPORT_NAME, RUNS_DIR, run_stamp
from pipeline.reporting.schema import REPORT_VERSION, RunReport
from pipeline.storage import Location

HTML_NAME = "report.html"
EXPECTED = "a report.json, a run directory (OUTPUT/_runs/RUN_ID) or an output root (OUTPUT with _runs/)"


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Print the summary (or the report JSON with --json), write the HTML page; key figures back."""
    from pipeline.config import StorageConfig
    from pipeline.reporting.html import render_html
    from pipeline.reporting.summary import format_summary

    storage = StorageConfig(endpoint_url=getattr(args, "endpoint_url", None))
    loc = find_report(args.target, storage)
    data = load_report(loc)
    html_where = write_html(render_html(data), loc, data, getattr(args, "html", None), storage)
    if getattr(args, "json", False):
        print(data.model_dump_json(indent=2, exclude_unset=True))  # as written
        print(f"html     {html_where}", file=sys.stderr)
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(format_summary(data, color=color))
        print(f"report   {loc.uri}")
        print(f"html     {html_where}")
    return {
        "status": data.status,
        "run_id": data.run_id,
        "report": loc.uri,
        "html": html_where,
        "drift_breach": data.drift_breach,
        "rows_in": data.rows.input,
        "rows_out": data.rows.output,
    }


# ------------------------------------------------------------------------------------------------
# finding and reading the report
# ------------------------------------------------------------------------------------------------


def _info(loc: Location):
    import pyarrow.fs as pafs

    try:
        return loc.fs.get_file_info(loc.path)
    except OSError as e:  # S3: no such bucket, access denied, endpoint unreachable
        raise UserError(f"{loc.uri}: cannot be read ({e}); expected {EXPECTED}") from None
    except pafs.ArrowException as e:  # pragma: no cover - other pyarrow errors
        raise UserError(f"{loc.uri}: cannot be read ({e}); expected {EXPECTED}") from None


def find_report(target: str, storage=None) -> Location:
    """The report.json that TARGET names (see the module docstring); UserError naming it otherwise."""
    import pyarrow.fs as pafs

    from pipeline.storage import resolve

    loc = resolve(target, storage)
    info = _info(loc)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{loc.uri}: does not exist; expected {EXPECTED}")
    if info.type == pafs.FileType.File:
        return loc
    run_report = loc.join(REPORT_NAME)
    if _info(run_report).type == pafs.FileType.File:
        return run_report
    runs = loc.join(RUNS_DIR)
    if _info(runs).type == pafs.FileType.Directory:
        latest = latest_run(runs)
        if latest is None:
            raise UserError(f"{runs.uri}: no run with a {REPORT_NAME} under it; expected {EXPECTED}")
        return latest
    raise UserError(f"{loc.uri}: has neither {REPORT_NAME} nor {RUNS_DIR}/; expected {EXPECTED}")


def _finished(loc: Location) -> datetime | None:
    from pipeline.storage import read_bytes

    try:
        value = json.loads(read_bytes(loc)).get("finished_at")
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


_NEWEST = 20


def latest_run(runs: Location) -> Location | None:
    """The report.json of the run under `runs` that finished last (then: the last by name)."""
    import pyarrow.fs as pafs

    infos = runs.fs.get_file_info(pafs.FileSelector(runs.path, recursive=False, allow_not_found=True))
    names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
    # run ids carry their UTC start (NAME-YYYYmmddTHHMMSSZ-xxxxxx): only the newest few are opened,
    # so years of nightly runs on S3 cost one listing, not one read per run
    names.sort(key=lambda n: (run_stamp(n), n), reverse=True)
    candidates = []
    for name in names[:_NEWEST]:
        rep = runs.join(name, REPORT_NAME)
        if runs.fs.get_file_info(rep.path).type != pafs.FileType.File:
            continue  # a run still going, or one that failed before writing its report
        when = _finished(rep) or datetime.min.replace(tzinfo=timezone.utc)
        candidates.append((when, name, rep))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


def load_report(loc: Location) -> RunReport:
    """The report at `loc`; a UserError naming the file and the key when it is not one."""
    from pydantic import ValidationError

    from pipeline.reporting.schema import load
    from pipeline.storage import read_bytes

    try:
        data = json.loads(read_bytes(loc))
    except OSError as e:
        raise UserError(f"{loc.uri}: cannot be read ({e})") from None
    except ValueError as e:
        raise UserError(f"{loc.uri}: not a run report (invalid JSON: {e}); expected {EXPECTED}") from None
    if not isinstance(data, dict) or "run_id" not in data:
        raise UserError(f"{loc.uri}: not a run report (no run_id); expected {EXPECTED}")
    try:
        report = load(data)
    except ValidationError as e:
        raise UserError(f"{loc.uri}: not a run report this batchscore can read:\n{e}") from None
    if report.report_version > REPORT_VERSION:
        print(
            f"batchscore report: {loc.uri} has report_version {report.report_version}; this batchscore "
            f"reads version {REPORT_VERSION}, some parts may be missing",
            file=sys.stderr,
        )
    return report


# ------------------------------------------------------------------------------------------------
# the HTML page
# ------------------------------------------------------------------------------------------------


def _safe_name(run_id: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(run_id or "run")) or "run"


def write_html(page: str, report_loc: Location, data: RunReport, html: str | None, storage=None) -> str:
    """Write the page to --html, else next to the report, else ./report-RUN_ID.html; returns where."""
    import pyarrow.fs as pafs

    from pipeline.storage import resolve, write_bytes

    body = page.encode("utf-8")
    if html:
        dest = resolve(html, storage)
        try:
            write_bytes(dest, body)
        except OSError as e:
            raise UserError(f"--html {html}: cannot write ({e})") from None
        return dest.uri
    if isinstance(report_loc.fs, pafs.LocalFileSystem):
        directory = os.path.dirname(report_loc.path)
        if os.access(directory, os.W_OK):
            dest = resolve(os.path.join(directory, HTML_NAME))
            try:
                write_bytes(dest, body)
                return dest.uri
            except OSError:
                pass  # read-only mount and the like: fall back to the working directory
    dest = resolve(f"report-{_safe_name(data.run_id)}.html")
    try:
        write_bytes(dest, body)
    except OSError as e:
        raise UserError(f"{dest.uri}: cannot write the HTML page ({e}); give --html PATH") from None
    return dest.uri


if __name__ == "__main__":  # `python -m jobs.report ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("report")
