"""The run report as one self-contained HTML page: tables and inline SVG plots.

No scripts, no external URLs, no web fonts: inline CSS and inline SVG only, so the file can be
opened from object storage, mailed or archived as is. Every text taken from the report is escaped.
The plots are matplotlib's (pipeline/reporting/plots.py): a score histogram per date against each
reference its drift checks used (the previous date, the checkpoint's training profile; all dates on
one score range), rows/s per Ray Data operator, and output and dead-letter rows per date.

It renders the typed report (pipeline/reporting/schema.py); numbers are formatted by
pipeline/reporting/formats.py, as in the terminal summary."""

from __future__ import annotations

import html
import json
from typing import Any

from pipeline.reporting import formats as f
from pipeline.reporting import plots
from pipeline.reporting.schema import DriftCheck, Partition, RunReport, ScoreProfile, Stage
from pipeline.reporting.summary import pool_line

HIST_BINS = 40
STATUS_COLOURS = {"succeeded": "#1a7f37", "rejected": "#cf222e", "skipped": "#6e7781"}

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0; padding: 24px 32px 48px; color: #1f2328; background: #fff; font-size: 15px;
       line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.sub { color: #57606a; margin: 0 0 14px; }
.status { display: inline-block; padding: 2px 10px; border-radius: 12px; color: #fff; font-weight: 600;
          font-size: 14px; vertical-align: middle; margin-left: 8px; }
.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 4px 16px;
         margin: 8px 0 0; }
.facts dt { color: #57606a; }
.facts dd { margin: 0; font-variant-numeric: tabular-nums; word-break: break-all; }
.banner { border: 1px solid #cf222e; background: #ffebe9; color: #82071e; padding: 10px 14px;
          border-radius: 6px; margin: 16px 0; }
.banner ul { margin: 6px 0 0; padding-left: 20px; }
.note { color: #57606a; font-style: italic; }
table { border-collapse: collapse; width: 100%; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; border-bottom: 1px solid #d8dee4; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
th[colspan] { text-align: center; }
th.l, td.l { text-align: left; }
tr.breach td { background: #fff5f5; }
td.bad { color: #cf222e; font-weight: 600; }
.flag { color: #cf222e; font-weight: 700; }
.ok { color: #1a7f37; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid #d8dee4; border-radius: 6px; padding: 8px; background: #fff; }
figcaption { font-size: 14px; color: #57606a; margin: 0 0 4px 4px; }
svg.plot { width: 100%; height: auto; display: block; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #0969da; }
pre { background: #f6f8fa; padding: 10px; border-radius: 6px; overflow-x: auto; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def score_range(report: RunReport) -> tuple[float, float] | None:
    """The common [lo, hi] of every date's scores and of the references, widened to round ticks."""
    profiles = [p.scores for p in report.partitions] + [report.score_reference, report.scores]
    ends = [(x.sketch[0], x.sketch[-1]) for x in profiles if x and x.count and x.sketch]
    if not ends:
        return None
    return plots.round_range(min(lo for lo, _ in ends), max(hi for _, hi in ends))


def _references(report: RunReport, part: Partition) -> list[tuple[str, ScoreProfile]]:
    """What the date's drift checks compared it with, named as the drift table names them: the
    previous date (in this run, or its stored profile) and the checkpoint's training profile."""
    found = []
    for which, check in part.drift.checks() if part.drift else []:
        if which == "previous":
            ref = check.reference
            in_run = [p.scores for p in report.partitions if _partition_key(p) == ref]
            profile = in_run[0] if in_run else report.previous_references.get(ref)
        else:
            profile = report.score_reference
        if profile is not None and profile.count:
            found.append((f"vs {which} ({check.reference})", profile))
    return found


def _partition_key(part: Partition) -> str:
    return ",".join(f"{k}={v}" for k, v in part.partition.items())


def _histograms(report: RunReport) -> str:
    if not report.partitions:
        return ""
    rng = score_range(report)
    figures, drawn = [], False
    for p in report.partitions:
        today = plots.density(p.scores.as_dict() if p.scores else None, *rng, HIST_BINS) if rng else None
        if today is None:
            svg = plots.message_svg(
                "score-histogram", f"Score distribution {p.label}", f"{p.label}: no scores", height=260
            )
        else:
            refs = [(n, plots.density(r.as_dict(), *rng, HIST_BINS)) for n, r in _references(report, p)]
            refs = [(n, d) for n, d in refs if d is not None]
            drawn = drawn or bool(refs)
            svg = plots.score_histogram_svg(p.label, today, refs, *rng)
        figures.append(f"<figure>{svg}</figure>")
    note = (
        "Bars: the date's score density; lines: each reference its drift checks compared it with "
        "(the previous date, the checkpoint's training profile). All plots share one score range."
        if drawn
        else "No drift check compared these dates with a reference: bars only."
    )
    return (
        f'<h2>Score distributions</h2><p class="note">{note}</p><div class="plots">{"".join(figures)}</div>'
    )


def _stage_plot(stages: list[Stage]) -> str:
    rows = [(s.name, float(s.rows_per_s)) for s in stages if s.rows_per_s is not None and s.rows_per_s >= 0]
    return f"<figure>{plots.stage_throughput_svg(rows)}</figure>"


def _partition_plot(partitions: list[Partition]) -> str:
    parts = [(p.label, p.output_rows or 0, p.dead_letter_rows or 0) for p in partitions]
    return f"<figure>{plots.partition_counts_svg(parts)}</figure>"


def _thresholds(report: RunReport) -> tuple[float | None, float | None]:
    t = report.drift.thresholds if report.drift else {}
    return t.get("psi_max"), t.get("quantile_shift_max", t.get("shift_max"))


def _drift_cells(check: DriftCheck | None, psi_max: float | None, shift_max: float | None) -> str:
    """Two cells (PSI, quantile shift in std) for one reference; breached values flagged."""
    if not check:
        return f'<td class="note">{f.MISSING}</td><td class="note">{f.MISSING}</td>'
    reasons = "; ".join(check.reasons)
    tip = _e(f"vs {check.reference}" + (f": {reasons}" if reasons else ""))
    shift = check.quantile_shift.max_in_std if check.quantile_shift else None
    # which measure breached: by the thresholds when the report has them, else both
    psi_bad = check.psi is not None and (check.psi > psi_max if psi_max is not None else check.breach)
    shift_bad = shift is not None and (shift > shift_max if shift_max is not None else check.breach)
    cells = []
    for text, bad in ((f.psi(check), psi_bad), (f.shift(check), shift_bad)):
        cls = ' class="bad"' if bad else ""
        mark = ' <span class="flag">▲</span>' if bad else ""
        cells.append(f'<td{cls} title="{tip}">{_e(text)}{mark}</td>')
    return "".join(cells)


_PARTITIONS_HEAD = (
    "<thead><tr>"
    '<th class="l" rowspan="2">date</th><th rowspan="2">rows in</th><th rowspan="2">rows out</th>'
    '<th rowspan="2">dead letter</th><th colspan="4">score</th>'
    '<th colspan="2">vs previous</th><th colspan="2">vs training</th><th rowspan="2">version</th>'
    '<th rowspan="2">drift</th></tr>'
    "<tr><th>mean</th><th>p50</th><th>p90</th><th>p99</th>"
    "<th>PSI</th><th>shift</th><th>PSI</th><th>shift</th></tr></thead>"
)


def _partition_row(p: Partition, psi_max: float | None, shift_max: float | None) -> str:
    s, d = p.scores or ScoreProfile(), p.drift
    q = s.quantiles
    breach = bool(d and d.breach)
    prev, train = (d.previous, d.training) if d else (None, None)
    ref_note = f' <span class="note">({_e(prev.reference)})</span>' if prev else ""
    verdict = '<span class="flag">BREACH</span>' if breach else '<span class="ok">ok</span>'
    if not breach and not (prev or train):
        verdict = '<span class="note">no reference</span>'
    if p.outcome == "done by another run":
        verdict = '<span class="note">done by another run</span>'
    tr_cls = ' class="breach"' if breach else ""
    dead_cls = ' class="bad"' if p.dead_letter_rows else ""
    return (
        f"<tr{tr_cls}>"
        f'<td class="l">{_e(p.label)}{ref_note}</td>'
        f"<td>{f.count(p.input_rows)}</td><td>{f.count(p.output_rows)}</td>"
        f"<td{dead_cls}>{f.count(p.dead_letter_rows)}</td>"
        f"<td>{f.number(s.mean)}</td><td>{f.number(q.get('p50'))}</td>"
        f"<td>{f.number(q.get('p90'))}</td><td>{f.number(q.get('p99'))}</td>"
        f"{_drift_cells(prev, psi_max, shift_max)}{_drift_cells(train, psi_max, shift_max)}"
        f"<td>{f.count(p.table_version)}</td><td>{verdict}</td></tr>"
    )


def _partitions_table(report: RunReport) -> str:
    if not report.partitions:
        return '<p class="note">No partitions were scored in this run.</p>'
    psi_max, shift_max = _thresholds(report)
    body = "".join(_partition_row(p, psi_max, shift_max) for p in report.partitions)
    rows = report.rows
    totals = (
        f'<tfoot><tr><th class="l">total</th><th>{f.count(rows.input)}</th>'
        f"<th>{f.count(rows.output)}</th><th>{f.count(rows.dead_letter)}</th>"
        f'<th colspan="10"></th></tr></tfoot>'
    )
    limits = ""
    if psi_max is not None or shift_max is not None:
        limits = (
            f'<p class="note">Thresholds: PSI &gt; {_e(f.plain(psi_max))}, quantile shift &gt; '
            f"{_e(f.plain(shift_max))} standard deviations of the reference. ▲ marks a value over its "
            "threshold.</p>"
        )
    heads = "".join(_partition_row(v, psi_max, shift_max) for p in report.partitions for v in p.head_views())
    if heads:  # several heads: the table above shows the first head, this one every head
        heads = f"<h3>Per head</h3><table>{_PARTITIONS_HEAD}<tbody>{heads}</tbody></table>"
    return f"<table>{_PARTITIONS_HEAD}<tbody>{body}</tbody>{totals}</table>{heads}{limits}"


def _drift_banner(report: RunReport) -> str:
    if not report.drift_breach:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in f.breaches(report.partitions))
    early = report.commits.committed if report.commits else []
    if report.status == "rejected" or report.drift.on_breach == "fail":
        action = "The flagged dates and those after them were not published (drift.on_breach: fail)."
        if early:
            action += f" Published before the breach: {', '.join(early)}."
    else:
        action = "The output was published (drift.on_breach: warn)."
    return (
        f'<div class="banner" role="alert"><strong>Score drift over the thresholds.</strong> {_e(action)}'
        f"<ul>{items}</ul></div>"
    )


def _header(report: RunReport) -> str:
    colour = STATUS_COLOURS.get(report.status, "#9a6700")
    model, sha = report.model, report.model.sha256 or ""
    dates = report.dates or [p.label for p in report.partitions]
    facts = [
        ("run id", _e(report.run_id)),
        ("dates", _e(", ".join(dates)) or f.MISSING),
        ("model", f"{_e(model.version or f.MISSING)} <span class='note'>({_e(model.format or '?')})</span>"),
        ("sha256", f"<code>{_e(sha[:16])}</code>{'…' if len(sha) > 16 else ''}" if sha else f.MISSING),
        ("started", _e(report.started_at or f.MISSING)),
        ("finished", _e(report.finished_at or f.MISSING)),
        ("total time", _e(f.seconds(report.timings_s.total_s))),
        ("throughput", f"{_e(f.number(report.throughput_rows_per_s))} rows/s"),
    ]
    if report.skipped_committed:
        facts.append(("already committed", _e(", ".join(report.skipped_committed))))
    if model.uri:
        facts.append(("model uri", _e(model.uri)))
    if model.registry is not None:
        facts.append(("registry version", _e(f"{model.registry.name} version {model.registry.version}")))
    rescored = {d: why for d, why in report.rescored_because.items() if why != "not committed yet"}
    if rescored:
        facts.append(("rescored", "<br>".join(_e(f"{d}: {why}") for d, why in rescored.items())))
    if report.error:
        facts.append(("error", _e(report.error)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f"<header><h1>{_e(report.job or 'batchscore run')}"
        f'<span class="status" style="background:{colour}">{_e(report.status)}</span></h1>'
        f'<p class="sub">batchscore run report</p><dl class="facts">{dl}</dl></header>'
    )


def _stages_table(stages: list[Stage]) -> str:
    if not stages:
        return ""
    rows = "".join(
        f'<tr><td class="l">{_e(s.name)}</td><td>{f.count(s.tasks)}</td>'
        f"<td>{f.count(s.rows_out)}</td><td>{f.seconds(s.wall_s)}</td>"
        f"<td>{f.seconds(s.task_time_s)}</td><td>{f.number(s.rows_per_s)}</td></tr>"
        for s in stages
    )
    return (
        '<table><thead><tr><th class="l">stage</th><th>tasks</th><th>rows out</th><th>wall</th>'
        f"<th>task time</th><th>rows/s</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _timings(report: RunReport) -> str:
    cells = "".join(
        f'<tr><td class="l">{_e(k.removesuffix("_s").replace("_", " "))}</td><td>{f.seconds(v)}</td></tr>'
        for k, v in report.timings_s.items()
        if v is not None
    )
    return f'<h2>Timings</h2><table style="width:auto"><tbody>{cells}</tbody></table>' if cells else ""


def _replicas(report: RunReport) -> str:
    pool, reps = report.pool, report.replicas
    if not pool and not reps:
        return ""
    parts = ["<h2>Model replicas</h2>"]
    if pool:
        parts.append(f"<p>Scoring: {_e(pool_line(report))}</p>")
    if reps:
        rows = "".join(
            f'<tr><td class="l">{_e(r.device)}</td>'
            f'<td class="l">{_e(", ".join(map(str, r.gpu_ids)) or f.MISSING)}</td>'
            f'<td class="l">{_e((r.node_id or "")[:12])}</td><td>{_e(r.pid)}</td>'
            f"<td>{f.seconds(r.model_load_s)}</td></tr>"
            for r in reps
        )
        parts.append(
            '<table style="width:auto"><thead><tr><th class="l">device</th><th class="l">GPUs</th>'
            '<th class="l">node</th><th>pid</th><th>model load</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    return "".join(parts)


def _skipped_inputs(report: RunReport) -> str:
    if not report.skipped_inputs:
        return ""
    items = "".join(f"<li>{_e(s.uri)}: {_e(s.reason)}</li>" for s in report.skipped_inputs)
    return f"<h2>Skipped input files</h2><ul>{items}</ul>"


def _raw(report: RunReport) -> str:
    parts = []
    if report.ray_data_stats:
        parts.append(
            f"<details><summary>Ray Data stats</summary><pre>{_e(report.ray_data_stats)}</pre></details>"
        )
    if report.config:
        cfg = json.dumps(report.config, indent=2, sort_keys=True, default=str)
        parts.append(
            f"<details><summary>Resolved config (hash {_e(report.config_hash or '?')})</summary>"
            f"<pre>{_e(cfg)}</pre></details>"
        )
    return f"<h2>Details</h2>{''.join(parts)}" if parts else ""


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _challengers(report: RunReport) -> str:
    """Each challenger: its status, per date the measures and the verdict, and a sampled scatter
    of its scores against the champion's."""
    from pipeline.reporting.plots import challenger_scatter_svg

    if not report.challengers:
        return ""
    head = "<tr><th>challenger</th><th>date</th><th>rows</th><th>spearman</th><th>mean shift (std)</th>"
    head += "<th>max quantile shift (std)</th><th>PSI</th><th>top-k Jaccard</th><th>top-1 changed</th>"
    head += "<th>verdict</th></tr>"
    rows, plots = [], []
    for ch in report.challengers:
        if ch.status == "failed" or not ch.comparisons:
            why = _e(ch.error or "nothing compared")
            rows.append(f"<tr><td>{_e(ch.name)}</td><td colspan=8>{_e(ch.status)}: {why}</td><td></td></tr>")
        for c in ch.comparisons:
            q = max((abs(v) for v in c.quantile_shift.values()), default=None)
            verdict = _e(c.verdict) + (f" ({_e('; '.join(c.broke))})" if c.broke else "")
            cls = ' class="breach"' if c.broke else ""
            rows.append(
                f"<tr{cls}><td>{_e(ch.name)}</td><td>{_e(c.date)}</td><td>{c.rows}"
                f"{' (sample)' if c.sampled else ''}</td><td>{_num(c.spearman)}</td>"
                f"<td>{_num(c.mean_shift_std, '+.3f')}</td><td>{_num(q)}</td><td>{_num(c.psi)}</td>"
                f"<td>{_num(c.topk_jaccard)}</td><td>{_num(c.top1_changed)}</td><td>{verdict}</td></tr>"
            )
            if c.plot:
                x, y = ch.champion_column or "score", ch.challenger_column or "score"
                plots.append(challenger_scatter_svg(ch.name, c.date, c.plot, x, y))
    table = f"<table>{head}{''.join(rows)}</table>"
    return f'<h2>Challengers</h2>{table}<div class="plots">{"".join(plots)}</div>'


def render_html(report: RunReport) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no URLs)."""
    body = [_header(report), _drift_banner(report)]
    if report.status == "skipped":
        body.append(
            '<p class="note">Every date was already committed with this model and config: nothing scored.</p>'
        )
    body += ["<h2>Partitions</h2>", _partitions_table(report), _histograms(report)]
    body += ["<h2>Throughput per stage</h2>", _stage_plot(report.stages), _stages_table(report.stages)]
    body += ["<h2>Rows per partition</h2>", _partition_plot(report.partitions)]
    body.append(_challengers(report))
    body += [_timings(report), _replicas(report), _skipped_inputs(report), _raw(report)]
    title = f"{_e(report.job or 'batchscore')} · {_e(report.run_id)} · {_e(report.status)}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head>\n"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
