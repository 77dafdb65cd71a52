"""The terminal summary of a run report: printed by `score`, `backfill`, `demo` and `report`.

Plain text with aligned columns; colour only when asked (a terminal without NO_COLOR)."""

from __future__ import annotations

import re

from pipeline.reporting import formats as f
from pipeline.reporting.schema import Partition, RunReport

_ANSI = {"red": "\033[31;1m", "green": "\033[32m", "yellow": "\033[33m", "dim": "\033[2m"}


def paint(text: str, colour: str, color: bool) -> str:
    return f"{_ANSI[colour]}{text}\033[0m" if color else text


def _strip(text: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", text)


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


def format_summary(report: RunReport, color: bool = False) -> str:
    """Status, model, pool, per-date counts, scores and drift, stages, timings."""
    out = _header(report, color) + [""]
    if report.partitions:
        out += _partition_lines(report.partitions, color)
    else:
        out.append("  no partitions scored\n")
    out += _challenger_lines(report, color)
    out += _stage_lines(report)
    return "\n".join(out).rstrip("\n") + "\n"


def _header(r: RunReport, color: bool) -> list[str]:
    colour = {"succeeded": "green", "rejected": "red"}.get(r.status, "yellow")
    out = [f"run {r.run_id}: {paint(r.status, colour, color)}   (job {r.job or f.MISSING})"]
    m, sha = r.model, r.model.sha256 or ""
    out.append(
        f"  model    {m.version or f.MISSING} ({m.format or '?'}"
        + (f", sha256 {sha[:12]}…" if sha else "")
        + ")"
        + (f" from {m.registry.uri} = version {m.registry.version}" if m.registry else "")
    )
    if r.pool:
        out.append(f"  scoring  {pool_line(r)}")
    t = r.timings_s
    out.append(
        f"  started  {r.started_at or f.MISSING}   finished {r.finished_at or f.MISSING}   "
        f"total {f.seconds(t.total_s)}"
    )
    out.append(
        f"  rows     in {f.count(r.rows.input)}   out {f.count(r.rows.output)}   "
        f"dead letter {f.count(r.rows.dead_letter)}   ({f.number(r.throughput_rows_per_s)} rows/s, "
        f"pipeline {f.seconds(t.pipeline_s)})"
    )
    if r.drift:
        verdict = paint("BREACH", "red", color) if r.drift.breach else "ok"
        lim = ", ".join(f"{k} {f.plain(v)}" for k, v in r.drift.thresholds.items() if k.endswith("_max"))
        out.append(
            f"  drift    {verdict} (on_breach: {r.drift.on_breach or f.MISSING}"
            + (f"; {lim}" if lim else "")
            + ")"
        )
    if r.rows.adopted:  # resume: what a killed run finished was not scored again
        out.append(
            f"  resumed  {f.count(r.rows.adopted)} rows adopted from a killed run's finished work, "
            f"{f.count(r.rows.scored)} scored by this run"
        )
    if r.rows.duplicate_key_rows:  # repeats scored (allow) or dead-lettered: worth a line of its own
        repeated = [f"{p.label} {p.duplicate_keys} keys" for p in r.partitions if p.duplicate_keys]
        out.append(
            f"  repeats  {f.count(r.rows.duplicate_key_rows)} rows carry a key that repeats within its date"
            + (f" ({', '.join(repeated)})" if repeated else "")
        )
    if r.skipped_committed:
        out.append(f"  skipped  already committed: {', '.join(r.skipped_committed)}")
    if r.error:
        out.append(f"  error    {r.error}")
    return out


def pool_line(r: RunReport) -> str:
    """How the run scored: the runner, the pool and its replicas, in one line."""
    pool, started = r.pool, len(r.replicas)
    if pool.runner == "local":
        return (
            f"local runner: {pool.max_replicas} scoring thread(s) in this process, one model, "
            f"{pool.torch_threads or 1} torch thread(s) each (no Ray)"
        )
    if pool.mode == "fused":
        return (
            f"fused CPU tasks ({f.plain(pool.num_cpus)} CPU, {pool.torch_threads or 1} torch thread(s) each) "
            f"in {started} worker process(es)"
        )
    return (
        f"replicas {pool.min_replicas}..{pool.max_replicas} x ({f.plain(pool.num_cpus)} CPU, "
        f"{f.plain(pool.num_gpus)} GPU), {started} started{_placement(pool.placement)}"
    )


def _placement(place) -> str:
    """The challengers' placement (pool.placement), when some have replicas of their own."""
    if place is None or place.challengers != "own":
        return ""
    pools = ", ".join(f"{n} x{place.replicas.get(n, 0)}" for n in place.own)
    return f"; challengers with replicas of their own: {pools} ({place.why})"


def _partition_row(p: Partition, color: bool) -> list[str]:
    s, d = p.scores, p.drift
    q = s.quantiles if s else {}
    verdict = paint("BREACH", "red", color) if d and d.breach else ("ok" if d and d.checks() else f.MISSING)
    if p.outcome == "done by another run":
        verdict = "done by another run"
    prev, train = (d.previous, d.training) if d else (None, None)
    return [
        p.label,
        *(f.count(v) for v in (p.input_rows, p.output_rows, p.dead_letter_rows)),
        f.number(s.mean if s else None),
        *(f.number(q.get(k)) for k in ("p50", "p90", "p99")),
        f.psi(prev),
        f.shift(prev),
        f.psi(train),
        f.shift(train),
        f.count(p.table_version),
        verdict,
    ]


def _partition_lines(parts: list[Partition], color: bool) -> list[str]:
    headers = ["date", "in", "out", "dead", "mean", "p50", "p90", "p99"]
    headers += ["PSI prev", "shift prev", "PSI train", "shift train", "version", "drift"]
    out = [table(headers, [_partition_row(p, color) for p in parts], right=set(range(1, len(headers) - 1)))]
    heads = [v for p in parts for v in p.head_views()]
    if heads:  # several heads: the table above shows the first; here every head on its own
        out += [
            "",
            "  per head",
            table(["date head", *headers[1:]], [_partition_row(v, color) for v in heads]),
        ]
    for line in f.breaches(parts):
        out.append(f"  {paint('BREACH', 'red', color)} {line}")
    return [*out, ""]


def _stage_lines(r: RunReport) -> list[str]:
    out = []
    if r.stages:
        body = [
            [
                s.name,
                f.count(s.tasks),
                f.count(s.rows_out),
                f.seconds(s.wall_s),
                f.seconds(s.task_time_s),
                f.number(s.rows_per_s),
            ]
            for s in r.stages
        ]
        out.append(table(["stage", "tasks", "rows out", "wall", "task time", "rows/s"], body))
    timings = [(k, v) for k, v in r.timings_s.items() if v is not None]
    if timings:
        out.append("  timings  " + "  ".join(f"{k.removesuffix('_s')} {f.seconds(v)}" for k, v in timings))
    return out


def _challenger_lines(r: RunReport, color: bool) -> list[str]:
    """Each challenger against the champion, per date: its verdict and the measures."""
    if not r.challengers:
        return []
    rows = []
    for ch in r.challengers:
        if ch.status == "failed":
            rows.append([ch.name, "-", paint("FAILED", "red", color), (ch.error or "")[:80]] + [""] * 6)
            continue
        for c in ch.comparisons:
            q = max((abs(v) for v in c.quantile_shift.values()), default=None)
            verdict = paint(c.verdict, "yellow" if c.broke else "green", color)
            rows.append(
                [
                    ch.name,
                    c.date,
                    verdict,
                    f"{c.rows}{'*' if c.sampled else ''}",
                    _n(c.spearman),
                    _n(c.mean_shift_std, "+.3f"),
                    _n(q),
                    _n(c.psi),
                    _n(c.topk_jaccard),
                    _n(c.top1_changed),
                ]
            )
        if not ch.comparisons:
            rows.append([ch.name, "-", ch.status, "not compared"] + [""] * 6)
    head = ["challenger", "date", "verdict", "rows", "spearman", "mean", "quant", "psi", "jaccard", "top1"]
    out = ["challengers vs champion (shifts in the champion's std; * a sample)"]
    out.append(table(head, rows, right=set(range(3, 10))))
    broke = [
        f"  {ch.name} {c.date}: {'; '.join(c.broke)}"
        for ch in r.challengers
        for c in ch.comparisons
        if c.broke
    ]
    return out + broke + ([""] if broke else [])


def _n(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)
