"""The finalize phase: the run report (report.json, report.html, the resolved config with secrets
redacted, the Prometheus textfile) built from what the other phases measured."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from pipeline.config import JobConfig, dump_config, shown_config
from pipeline.reporting.metrics import write_prometheus
from pipeline.reporting.runs import REPORT_NAME, RUNS_DIR
from pipeline.reporting.schema import (
    Commits,
    DateDrift,
    DeadlineSummary,
    DriftSummary,
    Head,
    HeadSummary,
    ModelInfo,
    Partition,
    Pool,
    RegistryInfo,
    Replica,
    Rows,
    RunReport,
    ScoreProfile,
    Timings,
)
from pipeline.run.context import RunContext
from pipeline.run.preflight import Prepared
from pipeline.storage import write_bytes

log = logging.getLogger("batchscore")


def skipped_report(cfg: JobConfig, run_id: str, meta: Any, done: list[str]) -> RunReport:
    return RunReport(
        run_id=run_id,
        job=cfg.name,
        status="skipped",
        skipped_committed=done,
        model=_model_info(cfg, meta),
        rows=Rows(input=0, output=0, dead_letter=0),
    )


def _model_info(cfg: JobConfig, meta: Any) -> ModelInfo:
    registry = RegistryInfo(**meta.registry.record()) if meta.registry is not None else None
    return ModelInfo(
        uri=cfg.model.uri, format=meta.format, version=meta.version, sha256=meta.sha256, registry=registry
    )


def fail_report(c: RunContext, report: RunReport, status: str, error: str | None) -> str:
    report.status = status
    report.error = error or report.error
    _time(report, c)
    if c.deadline and report.deadline is None:
        report.deadline = DeadlineSummary(**c.deadline)
    return write_report(c.cfg, c.p, c.run_id, report)


def _run_fields(c: RunContext, snapshot: dict[str, Any]) -> dict[str, Any]:
    """What every report of a run says of it, finished or stopped: ids, dates, config, model, pool."""
    cfg, p = c.cfg, c.p
    replicas = sorted(snapshot.get("replicas", []), key=lambda r: (r["node_id"], r["pid"]))
    return {
        "run_id": c.run_id,
        "job": cfg.name,
        "started_at": c.started.isoformat(timespec="seconds"),
        "finished_at": _now(),
        "dates": p.dates,
        "skipped_committed": c.dp.done,
        "rescored_because": {d: why for d, why in c.dp.why.items() if d in p.dates},
        "config": shown_config(cfg),
        "config_hash": cfg.digest(),
        "model": _model_info(cfg, p.model_meta),
        "pool": Pool(**asdict(c.pool)),
        "replicas": [Replica(**r) for r in replicas],
    }


def stopped_report(c: RunContext, snapshot: dict[str, Any], status: str, error: str) -> str:
    """The report of a run the watchdog stopped (`stalled`, `deadline`): what it had done, the
    dates committed before it stopped, and why; no profiles (its other dates were not finished)."""
    cfg, p = c.cfg, c.p
    report = RunReport(
        **_run_fields(c, snapshot),
        rows=Rows(input=p.inputs.rows),
        output_kind=cfg.output.kind,
        output_columns=cfg.output.value_columns,
        commits=Commits(**c.committer.summary()),
        deadline=DeadlineSummary(**c.deadline) if c.deadline else None,
        skipped_inputs=p.inputs.skipped,
    )
    return fail_report(c, report, status, error)


def fill_report(report: RunReport, c: RunContext, commits: list) -> None:
    by_date = {x.date: x for x in commits}
    files = {part.date: len(part.files) for part in c.p.inputs.partitions}
    for entry in report.partitions:
        x = by_date[entry.partition[c.cfg.input.partition_column]]
        entry.input_files = files[x.date]
        entry.input_rows, entry.output_rows = x.input_rows, x.output_rows
        entry.dead_letter_rows, entry.output_files = x.dead_letter_rows, x.output_files
        entry.table_version, entry.dead_letter_table_version = x.version, x.dead_letter_version
        entry.dead_letter_reasons, entry.outcome = x.dead_letter_reasons, x.outcome
    report.rows = Rows(
        input=c.p.inputs.rows,
        output=sum(x.output_rows for x in commits),
        dead_letter=sum(x.dead_letter_rows for x in commits),
        duplicate_key_rows=_duplicate_rows(c.p, None),
        adopted=c.adopted_rows,
        scored=c.p.inputs.rows - c.adopted_rows,
    )
    report.finished_at = _now()
    report.deadline = DeadlineSummary(**c.deadline) if c.deadline else None
    _time(report, c)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _time(report: RunReport, c: RunContext) -> None:
    report.timings_s = timings_of(c.p, c.timings, c.t_start)
    t_exec = c.timings.get("exec") or 0
    scored = c.p.inputs.rows - c.adopted_rows  # adopted rows were not read nor scored again
    report.throughput_rows_per_s = round(scored / t_exec, 1) if t_exec > 0 else None


def timings_of(p: Prepared, t: dict[str, float | None], t_start: float) -> Timings:
    def r(v):
        return round(v, 3) if v is not None else None

    return Timings(
        **{k: round(v, 3) for k, v in p.timings.items()},
        ray_start_s=r(t.get("ray")),
        pipeline_s=r(t.get("exec")),
        profile_s=r(t.get("profile")),
        commit_s=r(t.get("commit")),
        first_batch_s=r(t.get("first_batch")),  # from the process start or the call: run/clock.py
        first_batch_after_ray_s=r(t.get("first_batch_after_ray")),
        total_s=round(time.perf_counter() - t_start, 3),
    )


def build_report(
    c: RunContext, snapshot: dict[str, Any], profiles: dict[str, dict], drift: dict[str, dict]
) -> RunReport:
    """The report before commit; counts and table versions are filled in once committed."""
    from models.scoreprofile import merge_profiles
    from pipeline.quality.drift import run_references

    cfg, p = c.cfg, c.p
    heads = cfg.output.value_columns
    run_profiles = {h: merge_profiles([x[h] for x in profiles.values()]) for h in heads}
    refs = run_references(cfg.output, p.model_meta)
    return RunReport(
        **_run_fields(c, snapshot),
        partitions=[_partition_entry(p, part, profiles, drift) for part in p.inputs.partitions],
        rows=Rows(
            input=p.inputs.rows,
            duplicate_key_rows=_duplicate_rows(p, None),
            adopted=c.adopted_rows,
            scored=p.inputs.rows - c.adopted_rows,
        ),
        output_kind=cfg.output.kind,
        output_columns=heads,
        scores=ScoreProfile(**run_profiles[heads[0]]),
        score_reference=refs.get(heads[0]),
        heads={h: HeadSummary(scores=run_profiles[h], score_reference=refs.get(h)) for h in heads}
        if len(heads) > 1
        else {},
        drift=DriftSummary(
            breach=any(x["breach"] for x in drift.values()),
            on_breach=cfg.drift.on_breach,
            thresholds=cfg.drift.model_dump(mode="json"),
        ),
        skipped_inputs=p.inputs.skipped,
        previous_references=_previous_references(c, drift, heads[0]),
    )


def _previous_references(c: RunContext, drift: dict[str, dict], head: str) -> dict[str, dict]:
    """The stored profiles of the earlier dates the drift checks compared with (from the Delta
    log), so the page draws the reference each check used; dates of this run are in the report."""
    col, found = c.cfg.input.partition_column, {}
    for checks in drift.values():
        ref = (checks.get("previous") or {}).get("reference", "")
        date = ref.removeprefix(f"{col}=")
        if ref and date not in c.dates and date in c.committed:
            profile = c.committed[date][1].get(head)
            if profile and profile.get("count"):
                found[ref] = profile
    return found


def _partition_entry(p: Prepared, part, profiles: dict[str, dict], drift: dict[str, dict]) -> Partition:
    col, d = p.cfg.input.partition_column, part.date
    heads = p.cfg.output.value_columns
    first = profiles[d][heads[0]]
    dup = p.duplicates.dates.get(d) if p.duplicates is not None else None
    per_head = drift[d].get("heads") or {}
    return Partition(
        partition={col: d},
        uri=p.output.join(f"{col}={d}").uri,
        input_files=len(part.files),
        input_rows=part.rows,
        output_rows=first.get("count", 0) + first.get("nan", 0),
        duplicate_keys=len(dup.keys) if dup else 0 if p.duplicates is not None else None,
        duplicate_key_rows=_duplicate_rows(p, d),
        scores=first,
        drift=DateDrift(**{k: v for k, v in drift[d].items() if k != "heads"}),
        heads={h: Head(scores=profiles[d][h], drift=per_head.get(h)) for h in heads}
        if len(heads) > 1
        else {},
    )


def _duplicate_rows(p: Prepared, date: str | None) -> int | None:
    """Rows whose key repeats within their date: of `date`, or of every date (None: not checked)."""
    if p.duplicates is None:
        return None
    found = p.duplicates.dates
    return sum(x.rows for d, x in found.items() if date is None or d == date)


def write_report(cfg: JobConfig, p: Prepared, run_id: str, report: RunReport) -> str:
    run_dir = p.output.join(RUNS_DIR, run_id)
    loc = run_dir.join(REPORT_NAME)
    report.report_uri = loc.uri
    write_bytes(loc, report.to_json().encode())
    write_bytes(run_dir.join("config.yaml"), dump_config(cfg).encode())
    if cfg.report.html:
        try:
            from pipeline.reporting.html import render_html

            write_bytes(run_dir.join("report.html"), render_html(report).encode())
        except Exception as e:  # the JSON report is the record; the page is a view of it
            log.warning("could not write report.html: %s", e)
    if cfg.report.prometheus_textfile:
        write_prometheus(cfg.report.prometheus_textfile, report)
    return loc.uri


def ray_data_stats(ds) -> str:
    try:
        return ds.stats()
    except Exception:  # stats are informative only
        return ""
