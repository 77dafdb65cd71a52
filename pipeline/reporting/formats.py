"""The one set of formatters for reports: the HTML page, the terminal summary of `score` and
`report`, and the log all show numbers, times and drift verdicts the same way."""

from __future__ import annotations

import math
from typing import Any

from pipeline.reporting.schema import DriftCheck, Partition

MISSING = "–"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def count(value: Any) -> str:
    """Rows, files, tasks: 1,234,567."""
    return f"{int(value):,}" if _is_number(value) else MISSING


def number(value: Any, digits: int = 4) -> str:
    """A measured value: 4 significant digits below 1000, whole thousands above."""
    if not _is_number(value) or not math.isfinite(value):
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:#.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def seconds(value: Any) -> str:
    if not _is_number(value):
        return MISSING
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def plain(value: Any) -> str:
    """A setting as written: 0.25, 4, warn."""
    if _is_number(value):
        return f"{value:g}"
    return MISSING if value is None else str(value)


def psi(check: DriftCheck | None) -> str:
    return f"{check.psi:.3f}" if check and check.psi is not None else MISSING


def shift(check: DriftCheck | None) -> str:
    value = check.quantile_shift.max_in_std if check and check.quantile_shift else None
    return f"{value:.2f}σ" if value is not None else MISSING


def drift_line(p: Partition, which: str, check: DriftCheck) -> str:
    """'2026-11-04 vs training (checkpoint): PSI 0.412 > drift.psi_max 0.25' (or its measures)."""
    if check.breach:
        said = "; ".join(check.reasons)
    else:
        said = f"PSI {psi(check)}, quantile shift {shift(check)}: ok"
    return f"{p.label} vs {which} ({check.reference}): {said}"


def breaches(partitions: list[Partition]) -> list[str]:
    """One line per date and reference over a threshold."""
    views = [v for p in partitions for v in (p.head_views() or [p])]
    return [drift_line(p, which, c) for p in views if p.drift for which, c in p.drift.checks() if c.breach]


def si(value: float) -> str:
    """Axis ticks: 1.5k, 2M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"
