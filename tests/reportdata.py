"""A realistic run report (docs/reports.md, version 1) built from real score profiles, for the report
page and `batchscore report` tests. No Ray, no torch: profiles come from numpy arrays."""

from __future__ import annotations

import copy
from html.parser import HTMLParser
from typing import Any

import numpy as np

from models.scoreprofile import compare, profile_array

THRESHOLDS = {"psi_max": 0.25, "quantile_shift_max": 0.5, "bins": 10}
DATES = ["2026-11-02", "2026-11-03", "2026-11-04"]


def _scores(rng: np.random.Generator, n: int, a: float, b: float) -> np.ndarray:
    return rng.beta(a, b, size=n)


def sample_report(
    *,
    job: str = "ctr-daily",
    run_id: str = "ctr-daily-20261105T020000Z-ab12cd",
    finished_at: str = "2026-11-05T02:07:41+00:00",
    drifted_last_date: bool = True,
    with_reference: bool = True,
    with_stages: bool = True,
) -> dict[str, Any]:
    """Three dates scored against a training reference; the last one drifted when asked."""
    rng = np.random.default_rng(7)
    reference = profile_array(_scores(rng, 20_000, 2.0, 8.0)) if with_reference else None
    kw = {"psi_max": THRESHOLDS["psi_max"], "shift_max": THRESHOLDS["quantile_shift_max"], "bins": 10}
    partitions, all_scores, prev = [], [], None
    for i, date in enumerate(DATES):
        a, b = (4.0, 5.0) if (drifted_last_date and i == len(DATES) - 1) else (2.0, 8.0)
        n = 30_000 + 1000 * i
        values = _scores(rng, n, a, b)
        all_scores.append(values)
        prof = profile_array(values)
        drift: dict[str, Any] = {"previous": None, "training": None}
        if prev is not None:
            drift["previous"] = {"reference": f"ds={prev[0]}", **compare(prof, prev[1], **kw)}
        if reference is not None:
            drift["training"] = {"reference": "checkpoint", **compare(prof, reference, **kw)}
        drift["breach"] = any(c and c["breach"] for c in (drift["previous"], drift["training"]))
        dead = 3 * i
        partitions.append(
            {
                "partition": {"ds": date},
                "uri": f"/data/preds/ds={date}",
                "input_files": 4,
                "input_rows": n + dead,
                "output_rows": n,
                "dead_letter_rows": dead,
                "output_files": [f"part-{run_id}-{k:05d}.parquet" for k in range(2)],
                "scores": prof,
                "drift": drift,
            }
        )
        prev = (date, prof)
    stage_rows = [  # name, tasks, rows out, wall s, task time s
        ("ReadParquet", 12, 93_009, 2.1, 9.8),
        ("MapBatches(preprocess)", 12, 93_000, 3.4, 14.2),
        ("MapBatches(Predictor)", 24, 93_000, 5.9, 11.0),
        ("Write", 6, 93_000, 1.2, 3.1),
    ]
    keys = ("name", "tasks", "rows_out", "wall_s", "task_time_s")
    stages = [dict(zip(keys, r, strict=True)) for r in stage_rows]
    for s in stages:
        s["rows_per_s"] = round(s["rows_out"] / s["wall_s"], 1)
    rows_out = sum(p["output_rows"] for p in partitions)
    dead_total = sum(p["dead_letter_rows"] for p in partitions)
    report = {
        "report_version": 1,
        "run_id": run_id,
        "job": job,
        "status": "succeeded",
        "started_at": "2026-11-05T02:00:00+00:00",
        "finished_at": finished_at,
        "dates": list(DATES),
        "skipped_committed": [],
        "config": {"name": job, "output": {"uri": "/data/preds"}},
        "config_hash": "9f2c1d0e",
        "model": {
            "uri": "/models/ctr",
            "format": "safetensors",
            "version": "dlrm-2026-11-01",
            "sha256": "3b7e5c0a9d1f42e8b6c4a2f0e1d3c5b7a9f8e6d4c2b0a1f3e5d7c9b8a6f4e2d0",
        },
        "pool": {"min_replicas": 1, "max_replicas": 2, "num_cpus": 1.0, "num_gpus": 0.0},
        "replicas": [
            {"device": "cpu", "gpu_ids": [], "node_id": "a1b2c3d4e5f6a7b8", "pid": 4242, "model_load_s": 0.8}
        ],
        "partitions": partitions,
        "rows": {"input": rows_out + dead_total, "output": rows_out, "dead_letter": dead_total},
        "scores": profile_array(np.concatenate(all_scores)),
        "score_reference": reference,
        "drift": {
            "breach": any(p["drift"]["breach"] for p in partitions),
            "on_breach": "warn",
            "thresholds": {"psi_max": THRESHOLDS["psi_max"], "quantile_shift_max": 0.5},
        },
        "skipped_inputs": [],
        "stages": stages if with_stages else [],
        "timings_s": {
            "model_check_s": 0.41,
            "input_check_s": 0.22,
            "ray_start_s": 3.1,
            "pipeline_s": 12.4,
            "profile_s": 0.9,
            "commit_s": 0.3,
            "total_s": 17.5,
        },
        "throughput_rows_per_s": round((rows_out + dead_total) / 12.4, 1),
        "ray_data_stats": "Operator 1 ReadParquet: 12 tasks executed, 12 blocks produced",
    }
    return copy.deepcopy(report)


class Plots(HTMLParser):
    """Each <svg data-plot=...>: its kind, attributes, and the tags inside it (with their classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: list[dict] = []
        self._depth = 0
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "svg":
            self._depth += 1
            if self._depth == 1 and "data-plot" in a:
                self.plots.append({"kind": a["data-plot"], "attrs": a, "children": [], "titles": 0})
            return
        if self._depth and self.plots:
            self.plots[-1]["children"].append((tag, a.get("class", "")))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag == "svg":
            self._depth -= 1

    def handle_endtag(self, tag):
        if tag == "svg":
            self._depth -= 1

    def of(self, kind: str) -> list[dict]:
        return [p for p in self.plots if p["kind"] == kind]


def parse(page: str) -> Plots:
    p = Plots()
    p.feed(page)
    p.close()
    return p


def count(plot: dict, tag: str, cls: str | None = None) -> int:
    return sum(1 for t, c in plot["children"] if t == tag and (cls is None or cls in c.split()))
