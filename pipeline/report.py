"""Run report pieces: score profiles per date, drift against references, per-stage metrics, and
the Prometheus textfile. The report's schema is documented in docs/reports.md."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from pipeline.config import DriftConfig
from pipeline.errors import UserError
from pipeline.scorestats import compare, merge, partials_of_files
from pipeline.storage import Location, list_files
from pipeline.table import commits_of_history, run_file_prefix

log = logging.getLogger("batchscore")
REPORT_VERSION = 1
_LOOKBACK_DATES = 60
_LOOKBACK_COMMITS = 400


class DriftError(UserError):
    """Scores drifted past the thresholds with drift.on_breach=fail: nothing was published."""

    exit_code = 3


def profile_partitions(
    table: Location, col: str, dates: list[str], score_column: str, run_id: str
) -> dict[str, dict]:
    """The score profile of each date's prediction files written by this run."""
    out = {}
    for d in dates:
        src = table.join(f"{col}={d}")
        prefix = run_file_prefix(run_id)
        paths = [i.path for i in list_files(src, suffix=".parquet") if i.base_name.startswith(prefix)]
        out[d] = merge(partials_of_files(src.fs, paths, score_column))
    return out


def committed_profiles(table, limit: int = _LOOKBACK_COMMITS) -> dict[str, tuple[str, dict]]:
    """date -> (model sha256, score profile) of each date's latest commit among the table's last
    `limit` commits (read from the Delta log's commit metadata; no data is read)."""
    if table is None:
        return {}
    found: dict[str, tuple[str, dict]] = {}
    for c in commits_of_history(table, limit):  # newest first: the first seen is current
        d = c.get("date")
        if d and d not in found:
            found[d] = (c.get("model_sha256", ""), c.get("score_profile") or {})
    return found


def previous_profile(
    committed: dict[str, tuple[str, dict]], before: str, model_sha256: str
) -> tuple[str, dict] | None:
    """The most recent date before `before` committed by this model, with its stored profile."""
    for d in sorted((c for c in committed if c < before), reverse=True)[:_LOOKBACK_DATES]:
        sha, profile = committed[d]
        if sha == model_sha256 and profile and profile.get("count"):
            return d, profile
    return None


def evaluate_drift(
    cfg: DriftConfig,
    committed: dict[str, tuple[str, dict]],
    col: str,
    profiles: dict[str, dict],
    model_sha256: str,
    training_reference: dict | None,
    only: list[str] | None = None,
) -> dict[str, dict]:
    """Per date (of `only`, default all of `profiles`): drift against the previous date of the
    same model (in `profiles` or `committed`, see `committed_profiles`) and against training."""
    todo = sorted(only if only is not None else profiles)
    if not cfg.enabled:
        return {d: {"previous": None, "training": None, "breach": False} for d in todo}
    result = {}
    for d in todo:
        in_run = [r for r in profiles if r < d and profiles[r].get("count")]
        ref_date, ref = (max(in_run), profiles[max(in_run)]) if in_run else (None, None)
        later = {c: v for c, v in committed.items() if not ref_date or c > ref_date}
        found = previous_profile(later, d, model_sha256)
        if found is not None:
            ref_date, ref = found
        checks: dict[str, Any] = {"previous": None, "training": None}
        kwargs = {"psi_max": cfg.psi_max, "shift_max": cfg.quantile_shift_max, "bins": cfg.bins}
        if ref is not None:
            checks["previous"] = {"reference": f"{col}={ref_date}", **compare(profiles[d], ref, **kwargs)}
        if training_reference and training_reference.get("count"):
            checks["training"] = {
                "reference": "checkpoint",
                **compare(profiles[d], training_reference, **kwargs),
            }
        checks["breach"] = any(c and c["breach"] for c in (checks["previous"], checks["training"]))
        result[d] = checks
    return result


def drift_reasons(drift: dict[str, dict], col: str) -> list[str]:
    lines = []
    for d, checks in sorted(drift.items()):
        for which in ("previous", "training"):
            c = checks.get(which)
            if c and c["breach"]:
                lines.append(f"{col}={d} vs {which} ({c['reference']}): {'; '.join(c['reasons'])}")
    return lines


def stage_metrics(ds, input_rows: int | None = None) -> list[dict[str, Any]]:
    """Per Ray Data operator: tasks, rows out, wall time (first start to last end), task time.
    `input_rows`: the run's input rows, for an operator fused from read to write (whose own
    counters see neither rows in nor rows out)."""
    try:
        summary = ds.get_stats_summary()  # Ray 2.60 DeveloperAPI; informative only: failure -> []
    except Exception:
        return []
    stages = []

    def walk(s) -> None:
        for parent in getattr(s, "parents", []) or []:
            walk(parent)
        for op in s.operators_stats:
            start, end = op.earliest_start_time, op.latest_end_time
            wall = (end - start) if start is not None and end is not None else op.time_total_s
            rows_out = int(op.output_num_rows.sum) if op.output_num_rows else None
            rows_in = int(op.total_input_num_rows) if op.total_input_num_rows else None
            # a write emits one stats row per task: its throughput is in rows consumed
            rows = rows_in if op.operator_name.endswith("Write") else rows_out
            if op.operator_name.startswith("Read") and op.operator_name.endswith("Write"):
                rows_in = rows = input_rows
            stages.append(
                {
                    "name": op.operator_name,
                    "tasks": int(op.wall_time.count) if op.wall_time else None,
                    "rows_in": rows_in,
                    "rows_out": rows_out,
                    "wall_s": round(wall, 3) if wall else None,
                    "task_time_s": round(op.wall_time.sum, 3) if op.wall_time else None,
                    "rows_per_s": round(rows / wall, 1) if rows and wall else None,
                }
            )

    try:
        walk(summary)
    except Exception as e:
        log.debug("stage metrics unavailable: %s", e)
    return stages


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(report: dict[str, Any]) -> str:
    job = str(report.get("job", ""))
    lines = []

    def metric(name: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            lbl = ",".join(f'{k}="{_label(str(v))}"' for k, v in {"job": job, **labels}.items())
            lines.append(f"{name}{{{lbl}}} {float(value)!r}")

    import calendar
    from datetime import datetime

    finished = report.get("finished_at")
    ts = calendar.timegm(datetime.fromisoformat(finished).utctimetuple()) if finished else 0
    metric("batchscore_last_run_timestamp_seconds", "End of the last run (Unix time).", [({}, ts)])
    ok = 1.0 if report.get("status") in ("succeeded", "skipped") else 0.0
    metric("batchscore_last_run_success", "1 if the last run published its output.", [({}, ok)])
    metric(
        "batchscore_last_run_duration_seconds",
        "Wall time of the last run.",
        [({}, report.get("timings_s", {}).get("total_s", 0.0))],
    )
    rows = report.get("rows", {})
    metric(
        "batchscore_rows_total",
        "Rows of the last run.",
        [({"kind": k}, rows.get(k, 0)) for k in ("input", "output", "dead_letter")],
    )
    metric(
        "batchscore_throughput_rows_per_second",
        "Input rows per second of pipeline time in the last run.",
        [({}, report.get("throughput_rows_per_s") or 0.0)],
    )
    metric(
        "batchscore_drift_breach",
        "1 if a scored date breached a drift threshold.",
        [({}, 1.0 if report.get("drift", {}).get("breach") else 0.0)],
    )
    psi = []
    for p in report.get("partitions", []):
        for which in ("previous", "training"):
            c = (p.get("drift") or {}).get(which)
            if c and c.get("psi") is not None:
                psi.append(({"date": next(iter(p["partition"].values())), "reference": which}, c["psi"]))
    if psi:
        metric("batchscore_score_psi", "Population stability index of a date's scores.", psi)
    return "\n".join(lines) + "\n"


def write_prometheus(path: str, report: dict[str, Any]) -> None:
    """Write the textfile atomically (node_exporter must never read half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".batchscore-", suffix=".prom.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(prometheus_text(report))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
