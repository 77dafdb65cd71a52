"""`batchscore demo [--kind K]`: generate sample logs -> train a built-in model -> score the last day.

No cluster and no cloud account: a local Ray, local files under --workdir, configs/demo.yaml with
what the kind adds (KINDS): `scores` (the DLRM's click probability), `heads` (preset `heads`: click
and conversion columns), `embedding` (preset `two-tower`: a user vector per row), `topk` (the
DLRM's scores reduced to each user's 10 best items). Each kind writes a table of its own.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEMO_START = "2026-11-01"


# kind -> (model preset, what the kind sets in configs/demo.yaml)
KINDS: dict[str, tuple[str, list[str]]] = {
    "scores": ("dlrm-demo", []),
    "heads": ("heads", ["output.score_columns=[p_click, p_convert]"]),
    "embedding": ("two-tower", ["output.kind=embedding"]),
    "topk": ("dlrm-demo", ["output.top_k={group_by: [user_id], k: 10}"]),
    # beside the champion (the `scores` kind's model), a DLRM trained with another seed: both
    # scored in one pass (the local runner), each in its own table, compared per user's top 10
    "challenger": ("dlrm-demo", ["ray.runner=local", "compare={group_by: [user_id], k: 10}"]),
}


def demo(args: argparse.Namespace) -> dict:
    from types import SimpleNamespace

    from jobs.generate import generate
    from jobs.score import print_summary
    from jobs.synthetic import date_range
    from jobs.train import train
    from pipeline.config import load_config
    from pipeline.run.score import run_score

    kind = getattr(args, "kind", "scores")
    preset, kind_overrides = KINDS[kind]
    work = os.path.abspath(args.workdir)
    # a model per preset and a table per kind: `demo --kind heads` after `demo` keeps both
    model_dir = "model" if preset == "dlrm-demo" else f"model-{preset}"
    preds_dir = "predictions" if kind == "scores" else f"predictions-{kind}"
    data, model, preds = (os.path.join(work, x) for x in ("data", model_dir, preds_dir))
    dates = date_range(DEMO_START, args.days)
    train_dates, score_date = dates[:-1] or dates, dates[-1]

    print(f"[1/3] generating {args.days} days x {args.rows_per_day} rows into {data}")
    generate(
        SimpleNamespace(
            out=data,
            start=DEMO_START,
            days=args.days,
            rows_per_day=args.rows_per_day,
            shards_per_day=args.shards_per_day,
            seed=7,
            endpoint_url=None,
        )
    )
    print(f"[2/3] training the built-in model (preset {preset}) on {', '.join(train_dates)}")
    train(_train_args(data, train_dates, model, args.epochs, preset, f"{preset}-v1"))
    if kind == "challenger":
        kind_overrides = [*kind_overrides, _train_challenger(work, data, train_dates, args.epochs, preset)]
    shown = DEMO_CONFIG.relative_to(Path.cwd()) if DEMO_CONFIG.is_relative_to(Path.cwd()) else DEMO_CONFIG
    sets = " ".join(f"--set '{o}'" for o in kind_overrides)
    print(f"[3/3] scoring {score_date} with {shown}" + (f" {sets}" if sets else ""))
    cfg = load_config(
        DEMO_CONFIG,
        [f"input.uri={data}", f"model.uri={model}", f"output.uri={preds}", *kind_overrides, *args.overrides],
    )
    _quiet_ray(cfg)
    report = run_score(cfg, [score_date])
    print_summary(report)

    _how_to_read(preds, score_date)
    _show_kind(kind, preds, score_date, cfg)
    if kind == "challenger":
        _show_challengers(report)
    return report


def _show_challengers(report) -> None:
    """Where each challenger's table is, its verdict, and where the scatter plot is."""
    from pipeline.run.challengers import raise_for_challengers

    for ch in report.challengers:
        print(f"\nchallenger {ch.name}: {ch.status}, table {ch.table}, verdict {ch.verdict or '-'}")
        for c in ch.comparisons:
            print(
                f"  {c.date}: spearman {c.spearman:.3f}, top-10 Jaccard per user {c.topk_jaccard:.3f}, "
                f"top-1 changed for {c.top1_changed:.0%} of users"
                + (f"; broke: {'; '.join(c.broke)}" if c.broke else "")
            )
    print("  the page's Challengers section plots challenger against champion scores (report.html)")
    raise_for_challengers(report)


def _train_args(data: str, dates: list[str], out: str, epochs: int, preset: str, version: str, seed: int = 0):
    from types import SimpleNamespace

    return SimpleNamespace(
        data=data,
        dates=dates,
        out=out,
        format="safetensors",
        epochs=epochs,
        preset=preset,
        version=version,
        endpoint_url=None,
        seed=seed,
    )


def _train_challenger(work: str, data: str, dates: list[str], epochs: int, preset: str) -> str:
    """A second model, trained like the first with another seed: the override naming it a challenger."""
    from jobs.train import train

    model = os.path.join(work, "model-challenger")
    print(f"      and a challenger: the same preset with --seed 1, into {model}")
    train(_train_args(data, dates, model, epochs, preset, f"{preset}-seed1", seed=1))
    table = os.path.join(work, "predictions-challenger-seed1")
    return f"challengers=[{{name: seed1, model: {{uri: {model}}}, output: {{uri: {table}}}}}]"


def _quiet_ray(cfg) -> None:
    """The demo shows batchscore's own progress and summary; Ray's notes to operators (its token
    authentication notice, Ray Data's plans, progress logs and tips) would bury them. Only
    for a Ray the demo starts itself: token authentication, Ray's default for a new local
    cluster, is then asked for explicitly, which is the same setting without the notice."""
    import logging

    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray.data  # noqa: F401 - configures the ray.data logger, which is then turned down

    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _show_kind(kind: str, preds: str, score_date: str, cfg) -> None:
    """A few rows of what the kind writes, as a Delta reader gets them."""
    if kind == "scores":
        return
    from deltalake import DeltaTable

    table = DeltaTable(str(preds)).to_pyarrow_table(filters=[("ds", "=", score_date)])
    if kind == "heads":
        heads = cfg.output.value_columns
        print(f"\nheads: one float32 column each, {heads}; first rows:")
        for row in table.select(["event_id", *heads]).slice(0, 3).to_pylist():
            print(
                "  "
                + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            )
    elif kind == "embedding":
        from models.outputs import embedding_matrix

        vectors = embedding_matrix(table.column(cfg.output.embedding_column))
        print(
            f"\nembedding: a {vectors.shape[1]}-value vector per row; the first row's starts "
            f"{vectors[0][:4].round(3)}"
        )
    elif kind == "topk":
        top = cfg.output.top_k
        row = max(table.to_pylist(), key=lambda r: r[top.count_column])
        print(
            f"\ntop-K: one row per user ({table.num_rows} users), each with its {top.k} best items; "
            f"user_id={row['user_id']} ({row[top.count_column]} candidates):"
        )
        for item, score in list(zip(row["item_id"], row[cfg.output.order_by], strict=True))[:5]:
            print(f"  item_id={item}  {cfg.output.order_by}={score:.4f}")


def _this_python() -> str:
    """The interpreter running the demo (the venv's, which has deltalake), as a path the user can
    type from here: a bare `python` is often another environment."""
    rel = os.path.relpath(sys.executable)
    return shlex.quote(sys.executable if rel.startswith("..") else rel)


def _how_to_read(preds: str, score_date: str) -> None:
    """The table as a Delta reader sees it, and how to read it."""
    from deltalake import DeltaTable

    table = DeltaTable(str(preds))
    rows = table.to_pyarrow_table(columns=["ds"], filters=[("ds", "=", score_date)]).num_rows
    print(
        f"\npredictions: a Delta Lake table at {preds} (version {table.version()}, {score_date}: {rows} rows)"
    )
    print(
        f"  read it:   {_this_python()} -c \"import deltalake; print(deltalake.DeltaTable('"
        + str(preds)
        + "').to_pandas())\""
    )
    print(f"             polars.read_delta('{preds}'); DuckDB: SELECT * FROM delta_scan('{preds}')")
    print(f"  versions:  .venv/bin/batchscore history {preds}")
    print(f"run report:  .venv/bin/batchscore report {preds}  (summary here, plots in report.html)")


if __name__ == "__main__":  # `python -m jobs.demo ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("demo")
