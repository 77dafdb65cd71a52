"""The run report as one self-contained HTML page: tables and inline SVG plots.

No scripts, no external URLs, no web fonts: inline CSS and inline SVG only, so the file can be
opened from object storage, mailed or archived as is. Every text taken from the report is escaped.

Plots (each an ``<svg class="plot" data-plot=...>``):
  - ``score-histogram``: one per date, the date's score density (bars) against its reference
    (a polyline): the checkpoint's training profile when the report has one, else the run-wide
    profile. All dates share one score range so the plots compare at a glance.
  - ``stage-throughput``: rows/s per Ray Data operator, horizontal bars.
  - ``partition-counts``: output rows and dead-letter rows per date, stacked bars.

The report schema is documented in docs/reports.md; older reports without some of the keys render
with those parts left out."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from models.scoreprofile import histogram

HIST_BINS = 40


# Colours: bars/series must stay opaque (the browser test looks for these exact pixel colours).
C_TODAY = "#4c78a8"


C_REF = "#e45756"


C_OUT = "#54a24b"


C_DEAD = "#f58518"


C_STAGE = "#72b7b2"


C_AXIS = "#555"


C_GRID = "#e3e3e3"


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


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:#.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _g(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return "–" if value is None else _e(value)


def _int(value: Any) -> str:
    if value is None:
        return "–"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return _e(value)


def _secs(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def date_label(partition: dict[str, Any]) -> str:
    """'2026-11-04' for {'ds': '2026-11-04'}; 'a=1,b=2' for several keys."""
    part = partition.get("partition") or {}
    if len(part) == 1:
        return str(next(iter(part.values())))
    return ",".join(f"{k}={v}" for k, v in part.items()) or "?"


def _tick_fmt(v: float, step: float) -> str:
    if step >= 1 and abs(v) >= 1000:
        return _si(v)
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    return f"{v:.{min(decimals, 6)}f}"


def _si(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


# ------------------------------------------------------------------------------------------------
# SVG pieces
# ------------------------------------------------------------------------------------------------


def _svg_open(kind: str, title: str, width: int, height: int, extra: str = "") -> str:
    return (
        f'<svg class="plot" data-plot="{_e(kind)}"{extra} viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" font-family="system-ui, sans-serif" '
        f'font-size="12"><title>{_e(title)}</title>'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>'
    )


def _svg_message(kind: str, title: str, message: str, width: int = 560, height: int = 120) -> str:
    return (
        _svg_open(kind, title, width, height)
        + f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" fill="#57606a" '
        f'font-size="14">{_e(message)}</text></svg>'
    )


def _f(x: float) -> str:
    return f"{x:.1f}"


def score_range(report: dict[str, Any]) -> tuple[float, float] | None:
    """The common [lo, hi] of every date's scores and of the references."""
    lows, highs = [], []
    profiles = [p.get("scores") or {} for p in report.get("partitions") or []]
    profiles += [report.get("score_reference") or {}, report.get("scores") or {}]
    for prof in profiles:
        if prof.get("count") and prof.get("sketch"):
            lows.append(float(prof["sketch"][0]))
            highs.append(float(prof["sketch"][-1]))
    if not lows:
        return None
    lo, hi = min(lows), max(highs)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    ticks = nice_ticks(lo, hi, 6)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.0
    if step > 0:  # widen to round values, so the axis starts and ends on a tick
        lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return lo, hi


def _density(profile: dict[str, Any], lo: float, hi: float, bins: int) -> list[float] | None:
    if not profile or not profile.get("count") or not profile.get("sketch"):
        return None
    h = histogram(profile, lo, hi, bins)
    width = (hi - lo) / bins
    total = sum(h["counts"]) or 1.0
    return [c / (total * width) for c in h["counts"]]


def score_histogram_svg(
    label: str,
    profile: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    ref_label: str,
    lo: float,
    hi: float,
    bins: int = HIST_BINS,
) -> str:
    """The date's score density (bars) against a reference's (polyline) on [lo, hi]."""
    title = f"Score distribution {label}" + (f" vs {ref_label}" if reference else "")
    today = _density(profile or {}, lo, hi, bins)
    if today is None:
        return _svg_message("score-histogram", title, f"{label}: no scores", height=260)
    ref = _density(reference or {}, lo, hi, bins)
    W, H = 560, 270
    left, right, top, bottom = 56, 16, 34, 46
    pw, ph = W - left - right, H - top - bottom
    ymax = max(today + (ref or [0.0])) or 1.0
    yticks = nice_ticks(0.0, ymax * 1.05, 4)
    ytop = max(yticks[-1], ymax * 1.05)

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def sy(d: float) -> float:
        return top + ph - d / ytop * ph

    out = [_svg_open("score-histogram", title, W, H, f' data-date="{_e(label)}"')]
    # grid and y axis
    step = yticks[1] - yticks[0] if len(yticks) > 1 else ytop
    for t in yticks:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_f(y)}" y2="{_f(y)}" stroke="{C_GRID}"/>')
        out.append(
            f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end" fill="{C_AXIS}">'
            f"{_e(_tick_fmt(t, step))}</text>"
        )
    # bars
    bw = pw / bins
    for i, d in enumerate(today):
        if d <= 0:
            continue
        y = sy(d)
        out.append(
            f'<rect class="bar" x="{_f(left + i * bw + 0.5)}" y="{_f(y)}" width="{_f(max(bw - 1, 0.5))}" '
            f'height="{_f(top + ph - y)}" fill="{C_TODAY}"/>'
        )
    # reference polyline (a step outline through the bin centres)
    if ref is not None:
        pts = " ".join(f"{_f(left + (i + 0.5) * bw)},{_f(sy(d))}" for i, d in enumerate(ref))
        out.append(
            f'<polyline class="reference" points="{pts}" fill="none" stroke="{C_REF}" stroke-width="2.5" '
            'stroke-linejoin="round"/>'
        )
    # x axis
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{C_AXIS}"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="{C_AXIS}"/>'
    )
    xticks = [t for t in nice_ticks(lo, hi, 6) if lo - 1e-12 <= t <= hi + 1e-12]
    xstep = xticks[1] - xticks[0] if len(xticks) > 1 else (hi - lo)
    for t in xticks:
        x = sx(t)
        out.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top + ph}" y2="{top + ph + 5}" stroke="{C_AXIS}"/>'
            f'<text x="{_f(x)}" y="{top + ph + 18}" text-anchor="middle" fill="{C_AXIS}">'
            f"{_e(_tick_fmt(t, xstep))}</text>"
        )
    out.append(
        f'<text x="{left + pw / 2:.0f}" y="{H - 8}" text-anchor="middle" fill="#1f2328">score</text>'
        f'<text transform="translate(14 {top + ph / 2:.0f}) rotate(-90)" text-anchor="middle" '
        f'fill="#1f2328">density</text>'
    )
    # heading and legend
    out.append(f'<text x="{left}" y="20" font-size="14" font-weight="600" fill="#1f2328">{_e(label)}</text>')
    lx = left + pw - 250
    out.append(
        f'<rect x="{lx}" y="10" width="14" height="12" fill="{C_TODAY}"/>'
        f'<text x="{lx + 19}" y="20" fill="#1f2328">{_e(label)}</text>'
    )
    if ref is not None:
        out.append(
            f'<line x1="{lx + 110}" x2="{lx + 132}" y1="16" y2="16" stroke="{C_REF}" stroke-width="2.5"/>'
            f'<text x="{lx + 137}" y="20" fill="#1f2328">{_e(ref_label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def stage_throughput_svg(stages: list[dict[str, Any]]) -> str:
    title = "Throughput per stage (rows/s)"
    rows = [
        (str(s.get("name") or "?"), float(s["rows_per_s"]))
        for s in stages or []
        if isinstance(s.get("rows_per_s"), (int, float)) and s["rows_per_s"] >= 0
    ]
    if not rows:
        return _svg_message("stage-throughput", title, "no per-stage statistics in this report", width=1100)
    W = 1100
    left, right, top, bar_h, gap = 260, 110, 34, 22, 10
    H = top + len(rows) * (bar_h + gap) + 34
    pw = W - left - right
    vmax = max(v for _, v in rows) or 1.0
    ticks = nice_ticks(0.0, vmax, 5)
    xmax = max(ticks[-1], vmax)
    out = [_svg_open("stage-throughput", title, W, H)]
    out.append(f'<text x="8" y="20" font-size="14" font-weight="600" fill="#1f2328">{_e(title)}</text>')
    base = top + len(rows) * (bar_h + gap)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else xmax
    for t in ticks:
        x = left + t / xmax * pw
        out.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top - 4}" y2="{base}" stroke="{C_GRID}"/>'
            f'<text x="{_f(x)}" y="{base + 16}" text-anchor="middle" fill="{C_AXIS}">'
            f"{_e(_si(t) if step >= 1 else _tick_fmt(t, step))}</text>"
        )
    for i, (name, v) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(v / xmax * pw, 1.0)
        short = name if len(name) <= 38 else name[:36] + "…"
        out.append(
            f'<text x="{left - 8}" y="{y + bar_h / 2 + 4:.0f}" text-anchor="end" fill="#1f2328">'
            f"<title>{_e(name)}</title>{_e(short)}</text>"
            f'<rect class="bar" x="{left}" y="{y}" width="{_f(w)}" height="{bar_h}" fill="{C_STAGE}"/>'
            f'<text x="{_f(left + w + 6)}" y="{y + bar_h / 2 + 4:.0f}" fill="#1f2328">{v:,.0f}</text>'
        )
    out.append(f'<line x1="{left}" x2="{left}" y1="{top - 4}" y2="{base}" stroke="{C_AXIS}"/>')
    out.append("</svg>")
    return "".join(out)


def partition_counts_svg(partitions: list[dict[str, Any]]) -> str:
    title = "Rows per partition: output and dead letter"
    parts = [
        (date_label(p), int(p.get("output_rows") or 0), int(p.get("dead_letter_rows") or 0))
        for p in partitions or []
    ]
    if not parts:
        return _svg_message("partition-counts", title, "no partitions in this report", width=1100)
    n = len(parts)
    rotate = n > 14
    left, right, top, bottom = 70, 20, 40, (70 if rotate else 36)
    W = int(max(1100, left + right + n * 18))
    H = 300 + (34 if rotate else 0)
    pw, ph = W - left - right, H - top - bottom
    vmax = max(o + d for _, o, d in parts)
    ticks = nice_ticks(0.0, vmax or 1.0, 5)
    ymax = max(ticks[-1], vmax, 1)

    def sy(v: float) -> float:
        return top + ph - v / ymax * ph

    out = [_svg_open("partition-counts", title, W, H)]
    out.append(f'<text x="8" y="20" font-size="14" font-weight="600" fill="#1f2328">{_e(title)}</text>')
    step = ticks[1] - ticks[0] if len(ticks) > 1 else ymax
    for t in ticks:
        y = sy(t)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{_f(y)}" y2="{_f(y)}" stroke="{C_GRID}"/>'
            f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end" fill="{C_AXIS}">'
            f"{_e(_si(t) if step >= 1 else _tick_fmt(t, step))}</text>"
        )
    slot = pw / n
    bw = min(slot * 0.6, 70)
    for i, (label, o, d) in enumerate(parts):
        cx = left + (i + 0.5) * slot
        x = cx - bw / 2
        tip = _e(f"{label}: {o:,} output rows, {d:,} dead letter")
        if o:
            out.append(
                f'<rect class="bar output" x="{_f(x)}" y="{_f(sy(o))}" width="{_f(bw)}" '
                f'height="{_f(sy(0) - sy(o))}" fill="{C_OUT}"><title>{tip}</title></rect>'
            )
        if d:
            h = max(sy(o) - sy(o + d), 1.5)
            out.append(
                f'<rect class="bar dead-letter" x="{_f(x)}" y="{_f(sy(o) - h)}" width="{_f(bw)}" '
                f'height="{_f(h)}" fill="{C_DEAD}"><title>{tip}</title></rect>'
            )
        if o + d and not rotate:
            out.append(
                f'<text x="{_f(cx)}" y="{_f(sy(o + d) - 6)}" text-anchor="middle" fill="#1f2328" '
                f'font-size="11">{o + d:,}</text>'
            )
        if rotate:
            out.append(
                f'<text transform="translate({_f(cx + 4)} {top + ph + 12}) rotate(-45)" text-anchor="end" '
                f'fill="{C_AXIS}" font-size="11">{_e(label)}</text>'
            )
        else:
            out.append(
                f'<text x="{_f(cx)}" y="{top + ph + 18}" text-anchor="middle" fill="{C_AXIS}">'
                f"{_e(label)}</text>"
            )
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{C_AXIS}"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="{C_AXIS}"/>'
    )
    lx = W - right - 250
    out.append(
        f'<rect x="{lx}" y="10" width="14" height="12" fill="{C_OUT}"/>'
        f'<text x="{lx + 19}" y="20" fill="#1f2328">output rows</text>'
        f'<rect x="{lx + 120}" y="10" width="14" height="12" fill="{C_DEAD}"/>'
        f'<text x="{lx + 139}" y="20" fill="#1f2328">dead letter</text>'
    )
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------------------
# page sections
# ------------------------------------------------------------------------------------------------


def _thresholds(report: dict[str, Any]) -> tuple[float | None, float | None]:
    t = (report.get("drift") or {}).get("thresholds") or {}
    psi_max = t.get("psi_max")
    shift_max = t.get("quantile_shift_max", t.get("shift_max"))
    return psi_max, shift_max


def _drift_cells(check: dict[str, Any] | None, psi_max: float | None, shift_max: float | None) -> str:
    """Two cells (PSI, quantile shift in std) for one reference; breached values flagged."""
    if not check:
        return '<td class="note">–</td><td class="note">–</td>'
    reasons = "; ".join(str(r) for r in check.get("reasons") or [])
    ref = check.get("reference")
    tip = _e(f"vs {ref}" + (f": {reasons}" if reasons else ""))
    psi = check.get("psi")
    qs = check.get("quantile_shift") or {}
    shift = qs.get("max_in_std")
    breach = bool(check.get("breach"))
    # which measure breached: by the thresholds when the report has them, else both
    psi_bad = psi is not None and (psi > psi_max if psi_max is not None else breach)
    shift_bad = shift is not None and (shift > shift_max if shift_max is not None else breach)
    cells = []
    for value, bad, fmt in ((psi, psi_bad, "{:.3f}"), (shift, shift_bad, "{:.2f}σ")):
        text = fmt.format(value) if isinstance(value, (int, float)) else "–"
        cls = ' class="bad"' if bad else ""
        mark = ' <span class="flag">▲</span>' if bad else ""
        cells.append(f'<td{cls} title="{tip}">{_e(text)}{mark}</td>')
    return "".join(cells)


def _partitions_table(report: dict[str, Any]) -> str:
    parts = report.get("partitions") or []
    if not parts:
        return '<p class="note">No partitions were scored in this run.</p>'
    psi_max, shift_max = _thresholds(report)
    head = (
        "<thead><tr>"
        '<th class="l" rowspan="2">date</th><th rowspan="2">rows in</th><th rowspan="2">rows out</th>'
        '<th rowspan="2">dead letter</th><th colspan="4">score</th>'
        '<th colspan="2">vs previous</th><th colspan="2">vs training</th><th rowspan="2">drift</th></tr>'
        "<tr><th>mean</th><th>p50</th><th>p90</th><th>p99</th>"
        "<th>PSI</th><th>shift</th><th>PSI</th><th>shift</th></tr></thead>"
    )
    body = []
    for p in parts:
        s = p.get("scores") or {}
        q = s.get("quantiles") or {}
        drift = p.get("drift") or {}
        breach = bool(drift.get("breach"))
        prev = drift.get("previous")
        ref_note = f' <span class="note">({_e(prev.get("reference"))})</span>' if prev else ""
        verdict = '<span class="flag">BREACH</span>' if breach else '<span class="ok">ok</span>'
        if not prev and not drift.get("training"):
            verdict = '<span class="note">no reference</span>' if not breach else verdict
        dead = p.get("dead_letter_rows") or 0
        tr_cls = ' class="breach"' if breach else ""
        dead_cls = ' class="bad"' if dead else ""
        body.append(
            f"<tr{tr_cls}>"
            f'<td class="l">{_e(date_label(p))}{ref_note}</td>'
            f"<td>{_int(p.get('input_rows'))}</td><td>{_int(p.get('output_rows'))}</td>"
            f"<td{dead_cls}>{_int(p.get('dead_letter_rows'))}</td>"
            f"<td>{_num(s.get('mean'))}</td><td>{_num(q.get('p50'))}</td>"
            f"<td>{_num(q.get('p90'))}</td><td>{_num(q.get('p99'))}</td>"
            f"{_drift_cells(prev, psi_max, shift_max)}"
            f"{_drift_cells(drift.get('training'), psi_max, shift_max)}"
            f"<td>{verdict}</td></tr>"
        )
    rows = report.get("rows") or {}
    totals = (
        f'<tfoot><tr><th class="l">total</th><th>{_int(rows.get("input"))}</th>'
        f"<th>{_int(rows.get('output'))}</th><th>{_int(rows.get('dead_letter'))}</th>"
        f'<th colspan="9"></th></tr></tfoot>'
    )
    limits = ""
    if psi_max is not None or shift_max is not None:
        limits = (
            f'<p class="note">Thresholds: PSI &gt; {_g(psi_max)}, quantile shift &gt; {_g(shift_max)} '
            "standard deviations of the reference. ▲ marks a value over its threshold.</p>"
        )
    return f"<table>{head}<tbody>{''.join(body)}</tbody>{totals}</table>{limits}"


def _drift_banner(report: dict[str, Any]) -> str:
    drift = report.get("drift") or {}
    if not drift.get("breach"):
        return ""
    items = []
    for p in report.get("partitions") or []:
        for which in ("previous", "training"):
            c = (p.get("drift") or {}).get(which)
            if c and c.get("breach"):
                reasons = "; ".join(str(r) for r in c.get("reasons") or [])
                items.append(
                    f"<li>{_e(date_label(p))} vs {_e(which)} ({_e(c.get('reference'))}): {_e(reasons)}</li>"
                )
    early = (report.get("commits") or {}).get("committed") or []
    if report.get("status") == "rejected" or drift.get("on_breach") == "fail":
        action = "The flagged dates and those after them were not published (drift.on_breach: fail)."
        if early:
            action += f" Published before the breach: {', '.join(str(d) for d in early)}."
    else:
        action = "The output was published (drift.on_breach: warn)."
    return (
        f'<div class="banner" role="alert"><strong>Score drift over the thresholds.</strong> {_e(action)}'
        f"<ul>{''.join(items)}</ul></div>"
    )


def _header(report: dict[str, Any]) -> str:
    status = str(report.get("status") or "unknown")
    colour = STATUS_COLOURS.get(status, "#9a6700")
    model = report.get("model") or {}
    sha = str(model.get("sha256") or "")
    timings = report.get("timings_s") or {}
    dates = report.get("dates") or [date_label(p) for p in report.get("partitions") or []]
    facts = [
        ("run id", _e(report.get("run_id"))),
        ("dates", _e(", ".join(str(d) for d in dates)) or "–"),
        (
            "model",
            f"{_e(model.get('version') or '–')} <span class='note'>({_e(model.get('format') or '?')})</span>",
        ),
        ("sha256", f"<code>{_e(sha[:16])}</code>{'…' if len(sha) > 16 else ''}" if sha else "–"),
        ("started", _e(report.get("started_at") or "–")),
        ("finished", _e(report.get("finished_at") or "–")),
        ("total time", _e(_secs(timings.get("total_s")))),
        ("throughput", f"{_num(report.get('throughput_rows_per_s'))} rows/s"),
    ]
    if report.get("skipped_committed"):
        facts.append(("already committed", _e(", ".join(str(d) for d in report["skipped_committed"]))))
    if model.get("uri"):
        facts.append(("model uri", _e(model["uri"])))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f"<header><h1>{_e(report.get('job') or 'batchscore run')}"
        f'<span class="status" style="background:{colour}">{_e(status)}</span></h1>'
        f'<p class="sub">batchscore run report</p><dl class="facts">{dl}</dl></header>'
    )


def _histograms(report: dict[str, Any]) -> str:
    parts = report.get("partitions") or []
    if not parts:
        return ""
    reference = report.get("score_reference")
    ref_label, ref_desc = "training reference", "the checkpoint's training reference (score_reference)"
    if not (reference and reference.get("count")):
        reference = report.get("scores")
        ref_label = "all dates of this run"
        ref_desc = "all dates of this run together (the checkpoint has no training reference)"
        if not (reference and reference.get("count")):
            reference, ref_label = None, ""
    rng = score_range(report)
    figures = []
    for p in parts:
        label = date_label(p)
        if rng is None:
            svg = _svg_message(
                "score-histogram", f"Score distribution {label}", f"{label}: no scores", height=260
            )
        else:
            svg = score_histogram_svg(label, p.get("scores"), reference, ref_label, *rng)
        figures.append(f"<figure>{svg}</figure>")
    note = (
        f"Bars: the date's score density; line: {_e(ref_desc)}. All plots share one score range."
        if reference
        else "No reference profile in this report: bars only."
    )
    return (
        f'<h2>Score distributions</h2><p class="note">{note}</p><div class="plots">{"".join(figures)}</div>'
    )


def _stages_table(stages: list[dict[str, Any]]) -> str:
    if not stages:
        return ""
    rows = "".join(
        f'<tr><td class="l">{_e(s.get("name"))}</td><td>{_int(s.get("tasks"))}</td>'
        f"<td>{_int(s.get('rows_out'))}</td><td>{_secs(s.get('wall_s'))}</td>"
        f"<td>{_secs(s.get('task_time_s'))}</td><td>{_num(s.get('rows_per_s'))}</td></tr>"
        for s in stages
    )
    return (
        '<table><thead><tr><th class="l">stage</th><th>tasks</th><th>rows out</th><th>wall</th>'
        f"<th>task time</th><th>rows/s</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _timings(report: dict[str, Any]) -> str:
    t = report.get("timings_s") or {}
    if not t:
        return ""
    cells = "".join(
        f'<tr><td class="l">{_e(k.removesuffix("_s").replace("_", " "))}</td><td>{_secs(v)}</td></tr>'
        for k, v in t.items()
    )
    return f'<h2>Timings</h2><table style="width:auto"><tbody>{cells}</tbody></table>'


def _replicas(report: dict[str, Any]) -> str:
    pool = report.get("pool") or {}
    reps = report.get("replicas") or []
    if not pool and not reps:
        return ""
    parts = ["<h2>Model replicas</h2>"]
    if pool:
        parts.append(
            "<p>Pool: {}..{} replicas × ({} CPU, {} GPU)</p>".format(
                _e(pool.get("min_replicas", "?")),
                _e(pool.get("max_replicas", "?")),
                _g(pool.get("num_cpus")),
                _g(pool.get("num_gpus")),
            )
        )
    if reps:
        rows = "".join(
            f'<tr><td class="l">{_e(r.get("device"))}</td>'
            f'<td class="l">{_e(", ".join(map(str, r.get("gpu_ids") or [])) or "–")}</td>'
            f'<td class="l">{_e(str(r.get("node_id") or "")[:12])}</td><td>{_e(r.get("pid"))}</td>'
            f"<td>{_secs(r.get('model_load_s'))}</td></tr>"
            for r in reps
        )
        parts.append(
            '<table style="width:auto"><thead><tr><th class="l">device</th><th class="l">GPUs</th>'
            '<th class="l">node</th><th>pid</th><th>model load</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    return "".join(parts)


def _skipped_inputs(report: dict[str, Any]) -> str:
    skipped = report.get("skipped_inputs") or []
    if not skipped:
        return ""
    items = "".join(
        f"<li>{_e(s.get('uri') or s.get('path') or s.get('file') or s)}: {_e(s.get('reason', ''))}</li>"
        if isinstance(s, dict)
        else f"<li>{_e(s)}</li>"
        for s in skipped
    )
    return f"<h2>Skipped input files</h2><ul>{items}</ul>"


def _raw(report: dict[str, Any]) -> str:
    parts = []
    if report.get("ray_data_stats"):
        parts.append(
            f"<details><summary>Ray Data stats</summary><pre>{_e(report['ray_data_stats'])}</pre></details>"
        )
    if report.get("config"):
        cfg = json.dumps(report["config"], indent=2, sort_keys=True, default=str)
        parts.append(
            f"<details><summary>Resolved config (hash {_e(report.get('config_hash') or '?')})</summary>"
            f"<pre>{_e(cfg)}</pre></details>"
        )
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no URLs)."""
    job = report.get("job") or "batchscore"
    status = report.get("status")
    body = [_header(report), _drift_banner(report)]
    if status == "skipped":
        body.append(
            '<p class="note">Every date was already committed with this model and config: nothing scored.</p>'
        )
    body.append("<h2>Partitions</h2>")
    body.append(_partitions_table(report))
    body.append(_histograms(report))
    stages = report.get("stages") or []
    body.append("<h2>Throughput per stage</h2>")
    body.append(f"<figure>{stage_throughput_svg(stages)}</figure>")
    body.append(_stages_table(stages))
    body.append("<h2>Rows per partition</h2>")
    body.append(f"<figure>{partition_counts_svg(report.get('partitions') or [])}</figure>")
    body.append(_timings(report))
    body.append(_replicas(report))
    body.append(_skipped_inputs(report))
    raw = _raw(report)
    if raw:
        body.append(f"<h2>Details</h2>{raw}")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(job)} · {_e(report.get('run_id') or '')} · {_e(status or '')}</title>"
        f"<style>{_CSS}</style></head>\n"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
