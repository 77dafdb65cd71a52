"""Run report pieces: score profiles per date, drift against references, per-stage metrics, and
the Prometheus textfile. The report's schema is documented in docs/reports.md."""

from __future__ import annotations

import logging
from typing import Any

from models.scoreprofile import compare
from pipeline.commit.tables import commits_of_history
from pipeline.config import DriftConfig

log = logging.getLogger("batchscore")


_LOOKBACK_DATES = 60


_LOOKBACK_COMMITS = 400


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
