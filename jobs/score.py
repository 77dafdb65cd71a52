"""`batchscore score CONFIG --date D | --start D1 --end D2` (also `python -m jobs.score ...`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def score(
    config: str,
    overrides: list[str],
    args: argparse.Namespace,
    run_id: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    from jobs.cli import resolve_dates
    from pipeline.config import load_config
    from pipeline.run.score import run_score

    cfg = load_config(config, overrides)
    dates = resolve_dates(args, cfg)
    report = run_score(cfg, dates, run_id=run_id, force=force)
    print_summary(report)
    return report


def print_summary(report: dict[str, Any]) -> None:
    if report.get("skipped_committed"):
        print(
            f"already committed with model {report['model']['version']} and this config, skipped: "
            f"{', '.join(report['skipped_committed'])} (--force rescores)"
        )
    if report["status"] == "skipped":
        print("nothing to do")
        return
    t = report["timings_s"]
    print(f"run {report['run_id']}: {report['status']}")
    m, pool = report["model"], report["pool"]
    print(f"  model    {m['version']} ({m['format']}, sha256 {m['sha256'][:12]}…)")
    workers = len(report.get("replicas") or [])
    if pool.get("mode") == "fused":
        print(
            f"  scoring  fused CPU tasks ({pool['num_cpus']:g} CPU, {pool.get('torch_threads', 1)} torch "
            f"thread(s) each) in {workers} worker process(es)"
        )
    else:
        print(
            f"  replicas {pool['min_replicas']}..{pool['max_replicas']} x "
            f"({pool['num_cpus']:g} CPU, {pool['num_gpus']:g} GPU), {workers} started"
        )
    for p in report["partitions"]:
        key = ",".join(f"{k}={v}" for k, v in p["partition"].items())
        if p.get("outcome") == "done by another run":
            print(f"  {key}: committed by another run with the same model and inputs (no-op)")
            continue
        print(
            f"  {key}: {p['input_rows']} rows in -> {p['output_rows']} predictions "
            f"in {len(p['output_files'])} file(s), table version {p.get('table_version')}"
        )
        s = p.get("scores") or {}
        if s.get("count"):
            q = s["quantiles"]
            print(
                f"      scores mean {s['mean']:.4f}, p10 {q['p10']:.4f}, p50 {q['p50']:.4f}, "
                f"p90 {q['p90']:.4f}, p99 {q['p99']:.4f}"
            )
        for line in drift_lines(p.get("drift") or {}):
            print(f"      {line}")
    print(
        f"  {report['rows']['output']} rows in {t['pipeline_s']:.1f}s pipeline "
        f"({report['throughput_rows_per_s'] or 0:,.0f} rows/s), {t['total_s']:.1f}s total"
    )
    print(f"  report   {report['report_uri']}")
    table = report["config"]["output"]["uri"]
    print(f"  read     deltalake.DeltaTable({table!r}).to_pyarrow_table()  (or polars, DuckDB)")


def drift_lines(drift: dict[str, Any]) -> list[str]:
    """One line per reference: PSI, quantile shift, and the verdict."""
    lines = []
    for which in ("previous", "training"):
        c = drift.get(which)
        if not c or c.get("psi") is None:
            continue
        shift = (c.get("quantile_shift") or {}).get("max_in_std")
        verdict = "DRIFT: " + "; ".join(c["reasons"]) if c["breach"] else "ok"
        shown = f", quantile shift {shift:.2f} std" if shift is not None else ""
        lines.append(f"drift vs {which} ({c['reference']}): PSI {c['psi']:.3f}{shown} -> {verdict}")
    return lines


def main() -> int:
    from jobs.cli import main as cli_main

    return cli_main(["score", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
