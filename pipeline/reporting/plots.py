"""The report's plots, drawn by matplotlib and inlined into the page as SVG.

Each plot is one ``<svg class="plot" data-plot=KIND>`` with a ``<title>``; the series a reader (or a
test) may want to find carry classes: ``bar`` (plus ``output`` / ``dead-letter`` on the partition
plot) and ``reference`` (the reference line of a score histogram). matplotlib writes an artist's gid
as an ``id``; ours are turned into classes because an id must be unique on the page and the page
holds many plots. Text stays text (``svg.fonttype: none``), and the file has no metadata, no dates
and no external references, so the page stays self-contained and reproducible."""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Series colours: opaque, so that the browser test finds these exact pixel colours.
C_TODAY = "#4c78a8"
C_REF = "#e45756"
C_OUT = "#54a24b"
C_DEAD = "#f58518"
C_STAGE = "#72b7b2"
C_TEXT = "#1f2328"
C_PREV = "#b279a2"
# one line per reference a date was checked against: the first solid red, the next dashed purple
REFERENCE_STYLES: list[dict[str, Any]] = [{"color": C_REF}, {"color": C_PREV, "linestyle": "--"}]

_STYLE = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#555555",
    "axes.labelcolor": C_TEXT,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "xtick.color": "#555555",
    "ytick.color": "#555555",
    "legend.frameon": False,
}
_PT = 72  # matplotlib's SVG unit: points; sizes below are in points


@contextmanager
def _figure(width: float, height: float, salt: str) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": salt}):
        fig = Figure(figsize=(width / _PT, height / _PT), layout="constrained")
        yield fig


def _cls(name: str, i: int) -> str:
    return f"cls:{name}:{i}"


def _svg(fig: Any, kind: str, title: str, attrs: dict[str, str] | None = None) -> str:
    """The figure as an inline <svg>, tagged with its kind and title."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)  # HTML5 knows inline SVG without them
    text = re.sub(r'id="cls:([a-z -]+):\d+"', r'class="\1"', text)
    text = re.sub(r'\s+id="[A-Za-z0-9.]+_\d+"', "", text)  # figure_1, patch_3: repeated by every plot
    extra = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in (attrs or {}).items())
    head = f'<svg class="plot" data-plot="{kind}"{extra} role="img"'
    text = text.replace("<svg", head, 1)
    close = text.index(">") + 1
    return text[:close] + f"<title>{html.escape(title)}</title>" + text[close:].strip()


def message_svg(kind: str, title: str, message: str, width: int = 560, height: int = 120) -> str:
    """A plot with nothing to draw says why."""
    with _figure(width, height, f"{kind}-{title}") as fig:
        fig.text(0.5, 0.5, message, ha="center", va="center", color="#57606a", fontsize=11)
        return _svg(fig, kind, title)


def score_histogram_svg(
    label: str, today: list[float], references: list[tuple[str, list[float]]], lo: float, hi: float
) -> str:
    """The date's score density (bars, one per bin over [lo, hi]) against each reference's (a line
    each: the references its drift checks used, e.g. `vs previous (ds=...)`, `vs training`)."""
    title = f"Score distribution {label}" + "".join(f" {name}" for name, _ in references)
    bins = len(today)
    width = (hi - lo) / bins
    centres = [lo + (i + 0.5) * width for i in range(bins)]
    with _figure(560, 270, f"hist-{label}") as fig:
        ax = fig.subplots()
        shown = [(x, d) for x, d in zip(centres, today, strict=True) if d > 0]
        bars = ax.bar(
            [x for x, _ in shown], [d for _, d in shown], width=width * 0.92, color=C_TODAY, label=label
        )
        for i, bar in enumerate(bars):
            bar.set_gid(_cls("bar", i))
        for i, (name, density_) in enumerate(references):
            style = REFERENCE_STYLES[i % len(REFERENCE_STYLES)]
            (line,) = ax.plot(centres, density_, linewidth=2.5, label=name, **style)
            line.set_gid(_cls("reference", i))
        ax.set(xlim=(lo, hi), xlabel="score", ylabel="density", title=label)
        ax.title.set_horizontalalignment("left")
        ax.title.set_x(0.0)
        ax.grid(axis="x", visible=False)
        ax.set_axisbelow(True)
        ax.legend(loc="upper right", fontsize=8)
        return _svg(fig, "score-histogram", title, {"data-date": label})


def stage_throughput_svg(stages: list[tuple[str, float]]) -> str:
    """Rows/s per Ray Data operator, as horizontal bars; `stages` as (name, rows/s)."""
    title = "Throughput per stage (rows/s)"
    if not stages:
        return message_svg("stage-throughput", title, "no per-stage statistics in this report", width=1100)
    from matplotlib.ticker import FuncFormatter

    from pipeline.reporting.formats import si

    names = [n if len(n) <= 38 else n[:36] + "…" for n, _ in stages]
    with _figure(1100, 60 + 30 * len(stages), "stages") as fig:
        ax = fig.subplots()
        bars = ax.barh(range(len(stages)), [v for _, v in stages], height=0.7, color=C_STAGE)
        for i, bar in enumerate(bars):
            bar.set_gid(_cls("bar", i))
        ax.bar_label(bars, labels=[f"{v:,.0f}" for _, v in stages], padding=4, color=C_TEXT)
        ax.set_yticks(range(len(stages)), names)
        ax.invert_yaxis()
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
        ax.grid(axis="y", visible=False)
        ax.set_axisbelow(True)
        ax.margins(x=0.12)
        ax.set_title(title, loc="left")
        return _svg(fig, "stage-throughput", title)


def partition_counts_svg(parts: list[tuple[str, int, int]]) -> str:
    """Output and dead-letter rows per date, stacked; `parts` as (date, output, dead letter)."""
    title = "Rows per partition: output and dead letter"
    if not parts:
        return message_svg("partition-counts", title, "no partitions in this report", width=1100)
    from matplotlib.ticker import FuncFormatter

    from pipeline.reporting.formats import si

    rotate = len(parts) > 14
    with _figure(max(1100, 70 + 18 * len(parts)), 300 + (34 if rotate else 0), "partitions") as fig:
        ax = fig.subplots()
        x = list(range(len(parts)))
        out, dead = [o for _, o, _ in parts], [d for _, _, d in parts]
        _stacked(ax, x, out, [0] * len(parts), C_OUT, "output", "output rows")
        _stacked(ax, x, dead, out, C_DEAD, "dead-letter", "dead letter")
        if not rotate:
            for i, (o, d) in enumerate(zip(out, dead, strict=True)):
                if o + d:
                    ax.annotate(
                        f"{o + d:,}",
                        (i, o + d),
                        ha="center",
                        va="bottom",
                        xytext=(0, 3),
                        textcoords="offset points",
                        fontsize=8,
                        color=C_TEXT,
                    )
        ax.set_xticks(
            x,
            [label for label, _, _ in parts],
            rotation=45 if rotate else 0,
            ha="right" if rotate else "center",
        )
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
        ax.grid(axis="x", visible=False)
        ax.set_axisbelow(True)
        ax.margins(y=0.12)
        ax.set_title(title, loc="left")
        if any(out) or any(dead):
            ax.legend(loc="upper right", ncols=2, fontsize=8)
        return _svg(fig, "partition-counts", title)


def _stacked(
    ax: Any, x: list[int], values: list[int], bottom: list[int], colour: str, cls: str, label: str
) -> None:
    """One series of stacked bars; empty bars are not drawn (a date without dead letters has none)."""
    keep = [i for i in x if values[i]]
    if not keep:
        return
    bars = ax.bar(
        keep,
        [values[i] for i in keep],
        bottom=[bottom[i] for i in keep],
        width=min(0.6, 0.9),
        color=colour,
        label=label,
    )
    for i, bar in enumerate(bars):
        bar.set_gid(_cls(f"bar {cls}", i))


def density(profile: dict[str, Any] | None, lo: float, hi: float, bins: int) -> list[float] | None:
    """The profile's score density in `bins` equal bins over [lo, hi] (from its sketch)."""
    from models.scoreprofile import histogram

    if not profile or not profile.get("count") or not profile.get("sketch"):
        return None
    h = histogram(profile, lo, hi, bins)
    width = (hi - lo) / bins
    total = sum(h["counts"]) or 1.0
    return [c / (total * width) for c in h["counts"]]


def round_range(lo: float, hi: float) -> tuple[float, float] | None:
    """[lo, hi] widened to round tick values, so that an axis starts and ends on a tick."""
    from matplotlib.ticker import MaxNLocator

    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    ticks = MaxNLocator(6).tick_values(lo, hi)
    return float(max(t for t in ticks if t <= lo)), float(min(t for t in ticks if t >= hi))


def challenger_scatter_svg(name: str, date: str, pairs: list[list[float]], x: str, y: str) -> str:
    """Sampled (champion, challenger) scores of one date as points, with the diagonal: points on
    it score alike, a band around it is noise, a curve is a recalibration, a cloud a disagreement."""
    title = f"Challenger {name} vs champion, {date}"
    with _figure(360, 320, f"scatter-{name}-{date}") as fig:
        ax = fig.subplots()
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        lo, hi = min(xs + ys, default=0.0), max(xs + ys, default=1.0)
        (line,) = ax.plot([lo, hi], [lo, hi], color=C_REF, linewidth=1, label="equal scores")
        line.set_gid(_cls("reference", 0))
        dots = ax.scatter(xs, ys, s=4, color=C_TODAY, alpha=0.5, linewidths=0)
        dots.set_gid(_cls("point", 0))
        ax.set(xlabel=f"champion {x}", ylabel=f"{name} {y}", title=f"{date} ({len(pairs)} sampled rows)")
        ax.legend(loc="upper left", fontsize=8)
        return _svg(fig, "challenger-scatter", title, {"data-date": date, "data-challenger": name})
