"""Run report pieces: score profiles per date, drift against references, per-stage metrics, and
the Prometheus textfile. The report's schema is documented in docs/reports.md."""

from __future__ import annotations

import logging
from typing import Any

from models.scoreprofile import compare
from pipeline.config import DriftConfig
from pipeline.tablefiles import commits_of_history

log = logging.getLogger("batchscore")


_LOOKBACK_DATES = 60


_LOOKBACK_COMMITS = 400


def committed_profiles(
    table, limit: int = _LOOKBACK_COMMITS, first_head: str = "score"
) -> dict[str, tuple[str, dict[str, dict]]]:
    """date -> (model sha256, head -> profile) of each date's latest commit among the table's last
    `limit` commits (read from the Delta log's commit metadata; no data is read). A commit stores
    `score_profile` (its first head) and, with several heads, `score_profiles` (every head): one
    written before heads existed is read as the profile of `first_head`."""
    if table is None:
        return {}
    found: dict[str, tuple[str, dict[str, dict]]] = {}
    for c in commits_of_history(table, limit):  # newest first: the first seen is current
        d = c.get("date")
        if d and d not in found:
            heads = c.get("score_profiles") or {first_head: c.get("score_profile") or {}}
            found[d] = (c.get("model_sha256", ""), heads)
    return found


def commit_profiles(profiles: dict[str, dict], drift: dict) -> dict[str, dict]:
    """What a date's commit metadata keeps of its profiles and drift (see committed_profiles)."""
    heads = list(profiles)
    extra = {"score_profile": profiles[heads[0]] if heads else {}, "drift": drift}
    if len(heads) > 1:
        extra["score_profiles"] = profiles
    return extra


def evaluate_heads(
    cfg: DriftConfig,
    committed: dict[str, tuple[str, dict[str, dict]]],
    col: str,
    profiles: dict[str, dict[str, dict]],
    heads: list[str],
    model_sha256: str,
    references: dict[str, dict],
    only: list[str] | None = None,
) -> dict[str, dict]:
    """`evaluate_drift` for each head (output column) on its own. Per date: the first head's checks
    at the top (the shape of a single-head run), `breach` when any head breached, and with several
    heads `heads`: head -> its checks."""
    per_head = {
        h: evaluate_drift(
            cfg,
            {d: (sha, ps.get(h) or {}) for d, (sha, ps) in committed.items()},
            col,
            {d: p[h] for d, p in profiles.items()},
            model_sha256,
            references.get(h),
            only,
        )
        for h in heads
    }
    result = {}
    for d in per_head[heads[0]]:
        checks = dict(per_head[heads[0]][d])
        checks["breach"] = any(per_head[h][d]["breach"] for h in heads)
        if len(heads) > 1:
            checks["heads"] = {h: per_head[h][d] for h in heads}
        result[d] = checks
    return result


def training_references(meta, heads: list[str]) -> dict[str, dict]:
    """head -> the checkpoint's training-time profile: `score_references` by head name, else the
    single `score_reference` for the first head."""
    refs = getattr(meta, "score_references", None) or {}
    if refs:
        return {h: refs[h] for h in heads if h in refs}
    return {heads[0]: meta.score_reference} if meta.score_reference else {}


def run_references(output, meta) -> dict[str, dict]:
    """The training references a run's heads are checked against: none for output.top_k (its
    lists hold the best scores of each group, which the training profile of all rows does not
    describe; each date is still compared with the previous one)."""
    return {} if output.top_k is not None else training_references(meta, output.value_columns)


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
        per_head = checks.get("heads") or {"": checks}
        for head, hc in per_head.items():
            for which in ("previous", "training"):
                c = hc.get(which)
                if c and c["breach"]:
                    what = f"{head} " if head else ""
                    lines.append(f"{what}{col}={d} vs {which} ({c['reference']}): {'; '.join(c['reasons'])}")
    return lines
