"""Run metrics for machines: per-stage figures from Ray Data's stats, and the Prometheus textfile.
The report's schema is documented in docs/reports.md."""

from __future__ import annotations

import calendar
import logging
import os
import tempfile
from datetime import datetime

from pipeline.reporting.schema import RunReport, Stage

log = logging.getLogger("batchscore")


def stage_metrics(ds, input_rows: int | None = None) -> list[Stage]:
    """Per Ray Data operator: tasks, rows out, wall time (first start to last end), task time.
    `input_rows`: the run's input rows, for an operator that reads (whose own counters count read
    tasks in; fused up to the write, not rows out either)."""
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
            if op.operator_name.startswith("Read"):  # its own counters count read tasks, not rows
                rows_in = input_rows
            # a write emits one stats row per task: its rows out are the rows it wrote (consumed)
            if op.operator_name.endswith("Write"):
                rows_out = rows_in
            rows = rows_out
            stages.append(
                Stage(
                    name=op.operator_name,
                    tasks=int(op.wall_time.count) if op.wall_time else None,
                    rows_in=rows_in,
                    rows_out=rows_out,
                    wall_s=round(wall, 3) if wall else None,
                    task_time_s=round(op.wall_time.sum, 3) if op.wall_time else None,
                    rows_per_s=round(rows / wall, 1) if rows and wall else None,
                )
            )

    try:
        walk(summary)
    except Exception as e:
        log.debug("stage metrics unavailable: %s", e)
    return stages


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(report: RunReport) -> str:
    job = report.job or ""
    lines = []

    def metric(name: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            lbl = ",".join(f'{k}="{_label(str(v))}"' for k, v in {"job": job, **labels}.items())
            lines.append(f"{name}{{{lbl}}} {float(value)!r}")

    finished = report.finished_at
    ts = calendar.timegm(datetime.fromisoformat(finished).utctimetuple()) if finished else 0
    metric("batchscore_last_run_timestamp_seconds", "End of the last run (Unix time).", [({}, ts)])
    ok = 1.0 if report.status in ("succeeded", "skipped") else 0.0
    metric("batchscore_last_run_success", "1 if the last run published its output.", [({}, ok)])
    metric(
        "batchscore_last_run_duration_seconds",
        "Wall time of the last run.",
        [({}, report.timings_s.total_s or 0.0)],
    )
    rows = report.rows
    metric(
        "batchscore_rows_total",
        "Rows of the last run.",
        [({"kind": k}, getattr(rows, k) or 0) for k in ("input", "output", "dead_letter")],
    )
    metric(
        "batchscore_throughput_rows_per_second",
        "Input rows per second of pipeline time in the last run.",
        [({}, report.throughput_rows_per_s or 0.0)],
    )
    metric(
        "batchscore_drift_breach",
        "1 if a scored date breached a drift threshold.",
        [({}, 1.0 if report.drift_breach else 0.0)],
    )
    psi = [
        ({"date": p.label, "reference": which, **({"head": head} if head else {})}, c.psi)
        for p in report.partitions
        for head, d in (((h, x.drift) for h, x in p.heads.items()) if p.heads else [("", p.drift)])
        if d
        for which, c in d.checks()
        if c.psi is not None
    ]
    if psi:
        metric("batchscore_score_psi", "Population stability index of a date's scores.", psi)
    _challenger_metrics(report, metric)
    text = "\n".join(lines) + "\n"
    d = report.deadline
    if d is not None:
        text += deadline_text(job, _epoch(d.at), _epoch(d.projected_finish), d.projected_miss or d.missed)
    return text


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


DEADLINE_PREFIX = "batchscore_deadline"


def deadline_text(job: str, deadline: float | None, projected: float | None, miss: bool) -> str:
    """The deadline gauges: the deadline, the projected finish (ETA from measured throughput) and
    whether it falls past the deadline. Written while a run goes (`update_deadline_gauges`) and
    with the run's other figures at its end."""
    lbl = f'{{job="{_label(job)}"}}'
    out = []
    for name, help_, value in (
        (f"{DEADLINE_PREFIX}_timestamp_seconds", "The run's deadline (Unix time).", deadline),
        (
            f"{DEADLINE_PREFIX}_projected_finish_timestamp_seconds",
            "The running run's projected finish from measured throughput (Unix time).",
            projected,
        ),
        (f"{DEADLINE_PREFIX}_projected_miss", "1 if the run is projected to finish past its deadline.", miss),
    ):
        if value is not None:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name}{lbl} {float(value)!r}"]
    return "\n".join(out) + "\n" if out else ""


def update_deadline_gauges(path: str, text: str) -> None:
    """Replace the deadline gauges in the textfile while a run goes, keeping the last run's other
    figures (one file: node_exporter rejects a metric that two files both hold)."""
    try:
        with open(path) as f:
            kept = [line for line in f.read().splitlines() if DEADLINE_PREFIX not in line]
    except FileNotFoundError:
        kept = []
    _write_atomically(path, "\n".join(kept).strip("\n") + ("\n" if kept else "") + text)


def write_prometheus(path: str, report: RunReport) -> None:
    _write_atomically(path, prometheus_text(report))


def _write_atomically(path: str, text: str) -> None:
    """Write the textfile atomically (node_exporter must never read half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".batchscore-", suffix=".prom.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _challenger_metrics(report: RunReport, metric) -> None:
    """Per challenger: whether it failed, and per date its agreement and measures."""
    if not report.challengers:
        return
    metric(
        "batchscore_challenger_failed",
        "1 if the challenger failed (nothing of it published for its dates).",
        [({"challenger": c.name}, 1.0 if c.status == "failed" else 0.0) for c in report.challengers],
    )
    found = [(c.name, x) for c in report.challengers for x in c.comparisons]
    metric(
        "batchscore_challenger_agrees",
        "1 if the challenger's scores agree with the champion's within the compare thresholds.",
        [({"challenger": n, "date": x.date}, 1.0 if x.verdict == "agrees" else 0.0) for n, x in found],
    )
    for key, help_ in (
        ("spearman", "Spearman rank correlation of challenger and champion scores."),
        ("psi", "PSI of the challenger's scores over the champion's equal-mass bins."),
        ("mean_shift_std", "Challenger minus champion mean score, in the champion's std."),
        ("topk_jaccard", "Mean Jaccard overlap of each group's top-k (compare.group_by)."),
        ("top1_changed", "Share of groups whose top-1 item changed."),
    ):
        samples = [({"challenger": n, "date": x.date}, getattr(x, key)) for n, x in found]
        samples = [(lbl, v) for lbl, v in samples if v is not None]
        if samples:
            metric(f"batchscore_challenger_{key}", help_, samples)
