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
from pipeline.storage import Location

HTML_NAME = "report.html"
EXPECTED = "a report.json, a run directory (OUTPUT/_runs/RUN_ID) or an output root (OUTPUT with _runs/)"


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Print the summary (or the report JSON with --json), write the HTML page; key figures back."""
    from pipeline.config import StorageConfig
    from pipeline.reporting.html import render_html

    storage = StorageConfig(endpoint_url=getattr(args, "endpoint_url", None))
    loc = find_report(args.target, storage)
    data = load_report(loc)
    html_where = write_html(render_html(data), loc, data, getattr(args, "html", None), storage)
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        print(f"html     {html_where}", file=sys.stderr)
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(format_summary(data, color=color))
        print(f"report   {loc.uri}")
        print(f"html     {html_where}")
    rows = data.get("rows") or {}
    return {
        "status": data.get("status"),
        "run_id": data.get("run_id"),
        "report": loc.uri,
        "html": html_where,
        "drift_breach": bool((data.get("drift") or {}).get("breach")),
        "rows_in": rows.get("input"),
        "rows_out": rows.get("output"),
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


def load_report(loc: Location) -> dict[str, Any]:
    from pipeline.storage import read_bytes

    try:
        data = json.loads(read_bytes(loc))
    except OSError as e:
        raise UserError(f"{loc.uri}: cannot be read ({e})") from None
    except ValueError as e:
        raise UserError(f"{loc.uri}: not a run report (invalid JSON: {e}); expected {EXPECTED}") from None
    if not isinstance(data, dict) or "run_id" not in data:
        raise UserError(f"{loc.uri}: not a run report (no run_id); expected {EXPECTED}")
    version = data.get("report_version", 1)
    if isinstance(version, int) and version > 1:
        print(
            f"batchscore report: {loc.uri} has report_version {version}; this batchscore reads "
            "version 1, some parts may be missing",
            file=sys.stderr,
        )
    return data


# ------------------------------------------------------------------------------------------------
# the HTML page
# ------------------------------------------------------------------------------------------------


def _safe_name(run_id: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(run_id or "run")) or "run"


def write_html(page: str, report_loc: Location, data: dict[str, Any], html: str | None, storage=None) -> str:
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
    dest = resolve(f"report-{_safe_name(data.get('run_id'))}.html")
    try:
        write_bytes(dest, body)
    except OSError as e:
        raise UserError(f"{dest.uri}: cannot write the HTML page ({e}); give --html PATH") from None
    return dest.uri


# ------------------------------------------------------------------------------------------------
# the terminal summary
# ------------------------------------------------------------------------------------------------


_ANSI = {"red": "\033[31;1m", "green": "\033[32m", "yellow": "\033[33m", "dim": "\033[2m"}


def _paint(text: str, colour: str, color: bool) -> str:
    return f"{_ANSI[colour]}{text}\033[0m" if color else text


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:#.4g}"
    return str(value)


def _s(value: Any) -> str:
    return f"{value:.2f}s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def table(
    headers: list[str], rows: list[list[str]], right: set[int] | None = None, indent: str = "  "
) -> str:
    """Plain-text columns; column i right-aligned when i in `right`. Cells may hold ANSI colour."""
    right = right if right is not None else set(range(1, len(headers)))
    plain = [[_strip(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in plain) for i in range(len(headers))]
    lines = []
    for raw, text in zip([headers, *rows], plain, strict=True):
        cells = []
        for i, (cell, p) in enumerate(zip(raw, text, strict=True)):
            pad = " " * (widths[i] - len(p))
            cells.append(pad + cell if i in right else cell + pad)
        lines.append((indent + "  ".join(cells)).rstrip())
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _strip(text: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", text)


def _date(p: dict[str, Any]) -> str:
    part = p.get("partition") or {}
    return str(next(iter(part.values()))) if len(part) == 1 else ",".join(f"{k}={v}" for k, v in part.items())


def _drift_pair(check: dict[str, Any] | None) -> tuple[str, str]:
    if not check:
        return "-", "-"
    psi = check.get("psi")
    shift = (check.get("quantile_shift") or {}).get("max_in_std")
    return (
        f"{psi:.3f}" if isinstance(psi, (int, float)) else "-",
        f"{shift:.2f}" if isinstance(shift, (int, float)) else "-",
    )


def format_summary(report: dict[str, Any], color: bool = False) -> str:
    """The terminal summary: status, model, per-date counts, scores and drift, stages, timings."""
    out = _summary_header(report, color) + [""]
    parts = report.get("partitions") or []
    out += _partition_lines(parts, color) if parts else ["  no partitions scored\n"]
    out += _stage_lines(report)
    return "\n".join(out).rstrip("\n") + "\n"


def _summary_header(report: dict[str, Any], color: bool) -> list[str]:
    status = str(report.get("status") or "unknown")
    colour = {"succeeded": "green", "rejected": "red"}.get(status, "yellow")
    out = [f"run {report.get('run_id')}: {_paint(status, colour, color)}   (job {report.get('job')})"]
    m = report.get("model") or {}
    sha = str(m.get("sha256") or "")
    out.append(
        f"  model    {m.get('version') or '-'} ({m.get('format') or '?'}"
        + (f", sha256 {sha[:12]}…" if sha else "")
        + ")"
    )
    t = report.get("timings_s") or {}
    out.append(
        f"  started  {report.get('started_at') or '-'}   finished {report.get('finished_at') or '-'}   "
        f"total {_s(t.get('total_s'))}"
    )
    rows = report.get("rows") or {}
    out.append(
        f"  rows     in {_n(rows.get('input'))}   out {_n(rows.get('output'))}   "
        f"dead letter {_n(rows.get('dead_letter'))}   "
        f"({_n(report.get('throughput_rows_per_s'))} rows/s)"
    )
    drift = report.get("drift") or {}
    if drift:
        verdict = _paint("BREACH", "red", color) if drift.get("breach") else "ok"
        lim = ", ".join(f"{k} {v}" for k, v in (drift.get("thresholds") or {}).items())
        out.append(
            f"  drift    {verdict} (on_breach: {drift.get('on_breach', '-')}"
            + (f"; {lim}" if lim else "")
            + ")"
        )
    if report.get("skipped_committed"):
        out.append(f"  skipped  already committed: {', '.join(map(str, report['skipped_committed']))}")
    return out


def _partition_row(p: dict[str, Any], color: bool) -> list[str]:
    s = p.get("scores") or {}
    q = s.get("quantiles") or {}
    d = p.get("drift") or {}
    verdict = _paint("BREACH", "red", color) if d.get("breach") else ("ok" if d else "-")
    counts = [_n(p.get(k)) for k in ("input_rows", "output_rows", "dead_letter_rows")]
    scores = [_n(s.get("mean")), _n(q.get("p50")), _n(q.get("p90")), _n(q.get("p99"))]
    return [
        _date(p),
        *counts,
        *scores,
        *_drift_pair(d.get("previous")),
        *_drift_pair(d.get("training")),
        verdict,
    ]


def _partition_lines(parts: list[dict[str, Any]], color: bool) -> list[str]:
    headers = ["date", "in", "out", "dead", "mean", "p50", "p90", "p99"]
    headers += ["PSI prev", "shift prev", "PSI train", "shift train", "drift"]
    body = [_partition_row(p, color) for p in parts]
    out = [table(headers, body, right=set(range(1, len(headers) - 1)))]
    for p in parts:
        for which in ("previous", "training"):
            c = (p.get("drift") or {}).get(which)
            if c and c.get("breach"):
                reasons = "; ".join(map(str, c.get("reasons") or []))
                flag = _paint("BREACH", "red", color)
                out.append(f"  {flag} {_date(p)} vs {which} ({c.get('reference')}): {reasons}")
    if any((p.get("drift") or {}).get("breach") for p in parts):
        out.append("")
    return out


def _stage_lines(report: dict[str, Any]) -> list[str]:
    out = []
    stages = report.get("stages") or []
    if stages:
        keys = ("tasks", "rows_out", "wall_s", "task_time_s", "rows_per_s")
        fmt = (_n, _n, _s, _s, _n)
        body = [
            [str(s.get("name") or "?"), *(f(s.get(k)) for f, k in zip(fmt, keys, strict=True))]
            for s in stages
        ]
        out.append(table(["stage", "tasks", "rows out", "wall", "task time", "rows/s"], body))
    t = report.get("timings_s") or {}
    if t:
        out.append("  timings  " + "  ".join(f"{k.removesuffix('_s')} {_s(v)}" for k, v in t.items()))
    return out


def main() -> int:
    from jobs.cli import main as cli_main

    return cli_main(["report", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
