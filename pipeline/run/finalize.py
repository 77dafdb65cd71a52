"""The finalize phase: the run report (report.json, report.html, the resolved config with secrets
redacted, the Prometheus textfile) built from what the other phases measured."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from pipeline.config import JobConfig, dump_config, shown_config
from pipeline.reporting.metrics import REPORT_VERSION, write_prometheus
from pipeline.reporting.runs import REPORT_NAME, RUNS_DIR
from pipeline.run.context import RunContext
from pipeline.run.preflight import DatePlan, Prepared
from pipeline.run.resources import PoolPlan
from pipeline.storage import write_bytes

log = logging.getLogger("batchscore")


def skipped_report(cfg: JobConfig, run_id: str, meta: Any, done: list[str]) -> dict[str, Any]:
    return {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "job": cfg.name,
        "status": "skipped",
        "dates": [],
        "skipped_committed": done,
        "model": {
            "uri": cfg.model.uri,
            "format": meta.format,
            "version": meta.version,
            "sha256": meta.sha256,
        },
        "rows": {"input": 0, "output": 0, "dead_letter": 0},
        "report_uri": None,
    }


def fail_report(c: RunContext, report: dict, status: str, error: str | None) -> str:
    report["status"] = status
    if error:
        report["error"] = error
    report["timings_s"] = timings_of(c.p, c.timings, c.t_start)
    t_exec = c.timings["exec"] or 0
    report["throughput_rows_per_s"] = round(c.p.inputs.rows / t_exec, 1) if t_exec > 0 else None
    return write_report(c.cfg, c.p, c.run_id, report)


def fill_report(report: dict, c: RunContext, commits: list) -> None:
    by_date = {x.date: x for x in commits}
    for entry in report["partitions"]:
        x = by_date[entry["partition"][c.cfg.input.partition_column]]
        entry.update(
            input_files=len(next(part.files for part in c.p.inputs.partitions if part.date == x.date)),
            input_rows=x.input_rows,
            output_rows=x.output_rows,
            dead_letter_rows=x.dead_letter_rows,
            output_files=x.output_files,
            table_version=x.version,
            dead_letter_table_version=x.dead_letter_version,
            dead_letter_reasons=x.dead_letter_reasons,
            outcome=x.outcome,
        )
    report["rows"] = {
        "input": c.p.inputs.rows,
        "output": sum(x.output_rows for x in commits),
        "dead_letter": sum(x.dead_letter_rows for x in commits),
    }
    report["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["timings_s"] = timings_of(c.p, c.timings, c.t_start)
    t_exec = c.timings["exec"] or 0
    report["throughput_rows_per_s"] = round(c.p.inputs.rows / t_exec, 1) if t_exec > 0 else None


def timings_of(p: Prepared, t: dict[str, float | None], t_start: float) -> dict[str, float | None]:
    def r(v):
        return round(v, 3) if v is not None else None

    return {
        **{k: round(v, 3) for k, v in p.timings.items()},
        "ray_start_s": r(t.get("ray")),
        "pipeline_s": r(t.get("exec")),
        "profile_s": r(t.get("profile")),
        "commit_s": r(t.get("commit")),
        "first_batch_s": r(t.get("first_batch")),  # from the process start or the call: run/clock.py
        "total_s": round(time.perf_counter() - t_start, 3),
    }


def build_report(
    cfg: JobConfig,
    p: Prepared,
    run_id: str,
    started: datetime,
    dp: DatePlan,
    pool: PoolPlan,
    snapshot: dict[str, Any],
    profiles: dict[str, dict],
    drift: dict[str, dict],
) -> dict[str, Any]:
    """The report before commit; counts and table versions are filled in once committed."""
    from models.scoreprofile import merge_profiles

    return {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "job": cfg.name,
        "status": "succeeded",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dates": p.dates,
        "skipped_committed": dp.done,
        "rescored_because": {d: why for d, why in dp.why.items() if d in p.dates},
        "config": shown_config(cfg),
        "config_hash": cfg.digest(),
        "model": {
            "uri": cfg.model.uri,
            "format": p.model_meta.format,
            "version": p.model_meta.version,
            "sha256": p.model_meta.sha256,
        },
        "pool": asdict(pool),
        "replicas": sorted(snapshot.get("replicas", []), key=lambda r: (r["node_id"], r["pid"])),
        "partitions": [_partition_entry(p, part, profiles, drift) for part in p.inputs.partitions],
        "rows": {"input": p.inputs.rows, "output": None, "dead_letter": None},
        "scores": merge_profiles(list(profiles.values())),
        "score_reference": p.model_meta.score_reference,
        "drift": {
            "breach": any(c["breach"] for c in drift.values()),
            "on_breach": cfg.drift.on_breach,
            "thresholds": cfg.drift.model_dump(mode="json"),
        },
        "skipped_inputs": p.inputs.skipped,
    }


def _partition_entry(p: Prepared, part, profiles: dict[str, dict], drift: dict[str, dict]) -> dict[str, Any]:
    col, d = p.cfg.input.partition_column, part.date
    return {
        "partition": {col: d},
        "uri": p.output.join(f"{col}={d}").uri,
        "input_files": len(part.files),
        "input_rows": part.rows,
        "output_rows": profiles[d].get("count", 0) + profiles[d].get("nan", 0),
        "dead_letter_rows": None,
        "output_files": [],
        "table_version": None,
        "scores": profiles[d],
        "drift": drift[d],
    }


def write_report(cfg: JobConfig, p: Prepared, run_id: str, report: dict[str, Any]) -> str:
    run_dir = p.output.join(RUNS_DIR, run_id)
    loc = run_dir.join(REPORT_NAME)
    report["report_uri"] = loc.uri
    write_bytes(loc, json.dumps(report, indent=2).encode())
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
