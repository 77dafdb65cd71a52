"""The job plan: the stages folded over one lazy Dataset, then commit and report.

    read -> preprocess (CPU tasks) -> predict (actor pool) -> write -> commit (Delta, per date)
    read -> preprocess + predict -> write, fused in one task per file   (predict.mode fused,
                                                                         CPU-only pools)

Nothing is materialized on the driver; `write_parquet` streams rows through all stages into
files under the table's location, which only the per-date Delta commit makes visible.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from pipeline.commit import CommitError, CommitPolicy, RunIdentity, commit_partitions
from pipeline.config import JobConfig, dump_config, shown_config
from pipeline.deadletter import DeadLetterWriter
from pipeline.errors import UserError, user_error_types
from pipeline.predict import FusedScorer, ModelSource, Predictor
from pipeline.preprocess import Preprocessor
from pipeline.progress import ProgressView, WrittenRows, start_counter
from pipeline.read import discover, read_dataset
from pipeline.report import (
    REPORT_VERSION,
    DriftError,
    committed_profiles,
    drift_reasons,
    evaluate_drift,
    profile_partitions,
    stage_metrics,
    write_prometheus,
)
from pipeline.resources import PoolPlan, cluster_nodes, plan_pool
from pipeline.storage import Location, resolve, write_bytes
from pipeline.streamcommit import DateCommitter, subset
from pipeline.table import run_file_prefix
from pipeline.validate import ColumnRequirements, check_schemas
from pipeline.write import write_predictions

log = logging.getLogger("batchscore")
RUNS_DIR = "_runs"


@dataclass
class Prepared:
    """Everything checked on the driver before any model work: inputs, schema, model, columns."""

    cfg: JobConfig
    dates: list[str]
    inputs: Any
    requirements: ColumnRequirements
    source: ModelSource
    model_meta: Any
    output: Location
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passthrough(self) -> list[str]:
        return list(dict.fromkeys([*self.cfg.output.key_columns, self.cfg.input.partition_column]))


def new_run_id(cfg: JobConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{cfg.name}-{stamp}-{uuid.uuid4().hex[:6]}"


def prepare(
    cfg: JobConfig, dates: list[str], model_meta: Any = None, listed: dict[str, Any] | None = None
) -> Prepared:
    """Check config, input partitions and schemas, and the model (metadata + sha256). The
    workers get the sha256 verified here and refuse weights that differ (e.g. replaced since)."""
    t0 = time.perf_counter()
    source = ModelSource.from_config(cfg)
    meta = model_meta if model_meta is not None else source.inspect()[0]
    source = replace(source, sha256=meta.sha256)
    spec = meta.spec()
    if spec is None and not cfg.preprocessing.function:
        raise UserError(
            f"model {cfg.model.uri}: has no feature spec; set preprocessing.features in the config "
            "or preprocessing.function"
        )
    if cfg.preprocessing.function:
        spec = None
    t1 = time.perf_counter()
    inputs = discover(
        resolve(cfg.input.uri, cfg.storage),
        dates,
        cfg.input.partition_column,
        cfg.input.on_bad_file,
        listed=listed,
    )
    req = ColumnRequirements.for_job(cfg.output.key_columns, spec, cfg.input.columns)
    check_schemas(inputs, req, cfg.input.on_bad_file)
    for s in inputs.skipped:
        log.warning("skipped (input.on_bad_file=skip): %s: %s", s["uri"], s["reason"])
    t2 = time.perf_counter()
    prepared = Prepared(cfg, dates, inputs, req, source, meta, resolve(cfg.output.uri, cfg.storage))
    prepared.timings = {"model_check_s": t1 - t0, "input_check_s": t2 - t1}
    return prepared


def ensure_ray(cfg: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = cfg.ray.num_cpus
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


class StorageError(UserError):
    """The output cannot be written (unreachable, access denied, no such bucket)."""

    exit_code = 1


def check_output_writable(cfg: JobConfig, run_id: str) -> None:
    """Write and delete a probe object before any work, so a bad output fails in seconds."""
    output = resolve(cfg.output.uri, cfg.storage, quick=True)
    probe = output.join(f".batchscore-probe-{run_id}")  # at the root: leaves no directories behind
    try:
        write_bytes(probe, b"")
        probe.fs.delete_file(probe.path)
    except OSError as e:
        raise StorageError(f"cannot write to the output {output.uri}: {e}") from None


def fused_task_cap(cfg: JobConfig, pool: PoolPlan) -> int | None:
    """Fused mode with predict.max_replicas set: the most tasks (model copies) at once. Read and
    score get the same cap (Ray Data fuses task-pool stages only when their sizes are equal); the
    write then runs as its own stage (measured: capping it too split the read off instead)."""
    capped = pool.mode == "fused" and "max_replicas" in cfg.predict.model_fields_set
    return pool.max_replicas if capped else None


def build_dataset(
    p: Prepared,
    pool: PoolPlan,
    run_id: str,
    device_column: str | None = None,
    dead_letter: DeadLetterWriter | None = None,
    progress: Any = None,
):
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    cfg = p.cfg
    spec = p.model_meta.spec() if not cfg.preprocessing.function else None
    part_col = cfg.input.partition_column
    cap = fused_task_cap(cfg, pool)
    ds = read_dataset(p.inputs, list(dict.fromkeys([*p.requirements.columns, part_col])), cap)
    predictor_kwargs = {
        "source": p.source,
        "passthrough": p.passthrough,
        "run_id": run_id,
        "score_column": cfg.output.score_column,
        "device": cfg.predict.device,
        "precision": cfg.predict.precision,
        "num_threads": pool.torch_threads,
        "device_column": device_column,
        "progress": progress,
    }
    pre = Preprocessor(
        spec,
        p.passthrough,
        cfg.preprocessing.function,
        required=p.requirements.columns,
        key_columns=cfg.output.key_columns,
        dead_letter=dead_letter,
        progress=progress,
    )
    if pool.mode == "fused":
        return ds.map_batches(
            FusedScorer(pre, predictor_kwargs, cfg.predict.batch_size, cfg.preprocessing.batch_size),
            batch_format="pyarrow",
            batch_size=None,  # whole blocks: lets Ray Data fuse read -> score -> write into one task
            compute=TaskPoolStrategy(size=cap),
            num_cpus=pool.num_cpus,
            label_selector=cfg.predict.label_selector,
        )
    ds = ds.map_batches(
        pre,
        batch_format="pyarrow",
        batch_size=cfg.preprocessing.batch_size,
        num_cpus=cfg.preprocessing.num_cpus,
        label_selector=cfg.preprocessing.label_selector,
    )
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs=predictor_kwargs,
        compute=ActorPoolStrategy(min_size=pool.min_replicas, max_size=pool.max_replicas),
        batch_size=cfg.predict.batch_size,
        batch_format="pyarrow",
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        label_selector=cfg.predict.label_selector,
    )


_REMOTE_USER_ERROR = re.compile(
    r"^(pipeline\.errors\.\w+|models\.checkpoint\.ModelError|models\.features\.FeatureError): "
    r"(.+?)(?=\n\n|\Z)",
    re.M | re.S,
)


def _unwrap_user_error(exc: BaseException) -> Exception | None:
    """The UserError raised inside a Ray task or actor, if that is what failed the run.

    Ray re-raises a stage's exception as RayTaskError(UserCodeException) and keeps the original
    only as traceback text, so the class and message are read back from that text.
    """
    if isinstance(exc, user_error_types()):
        return exc
    matches = _REMOTE_USER_ERROR.findall(str(exc))
    if not matches:
        return None
    qualname, message = matches[-1]
    module, _, name = qualname.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, user_error_types())):
        return None
    return cls(message.strip())


RUN_ID = re.compile(r"[A-Za-z0-9_-]+")


def check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id) or len(run_id) > 128:
        raise UserError(f"--run-id {run_id!r}: use 1-128 letters, digits, '_' and '-'")
    return run_id


@dataclass
class DatePlan:
    """Which dates to score, which are already committed as asked, and why each is (re)scored."""

    todo: list[str]
    done: list[str]
    why: dict[str, str]
    listed: dict[str, Any]
    generations: dict[str, int | None]  # each date's generation in the log at planning time


def plan_dates(cfg: JobConfig, dates: list[str], model_sha256: str, force: bool = False) -> DatePlan:
    """Dates committed with this model, scoring config and unchanged input files are done (read
    from the Delta log); the others are scored, each with the reason."""
    from pipeline.commit import OutputTables, identity_of
    from pipeline.read import list_inputs

    col = cfg.input.partition_column
    listed = list_inputs(resolve(cfg.input.uri, cfg.storage), dates, col)
    tables = OutputTables.for_config(cfg)
    preds, dls = tables.predictions.open(), tables.dead_letters.open()
    todo, done, why, gens = [], [], {}, {}
    for d in dates:
        if d not in listed:  # nothing to score: discover() reports or skips it
            todo.append(d)
            continue
        identity = identity_of(listed[d], model_sha256, cfg.scoring_digest())
        state = tables.predictions.state(preds, col, d, identity, dls)
        gens[d] = state.generation
        if state.committed_as_asked and not force:
            done.append(d)
        else:
            todo.append(d)
            why[d] = "--force" if force else state.why_rescored()
    return DatePlan(todo, done, why, listed, gens)


def _refuse_committed_run_id(cfg: JobConfig, run_id: str) -> None:
    from pipeline.commit import OutputTables
    from pipeline.table import commits_of_history

    table = OutputTables.for_config(cfg).predictions.open()
    if table is not None and any(c.get("run_id") == run_id for c in commits_of_history(table)):
        raise UserError(f"--run-id {run_id}: a run with this id already committed to {cfg.output.uri}")


def _discard_uncommitted(tables, dates: list[str], run_id: str) -> None:
    """Delete this run's files of the `dates` it never committed (not in the log, so no reader
    has them); dates it committed are skipped. A killed run's files are left for vacuum."""
    from pipeline.table import delete_run_files, run_files

    col = tables.partition_column
    preds = tables.predictions.open()
    for d in dates:
        if tables.predictions.ever_committed_by(preds, col, d, run_id):
            continue  # its files are in the log (maybe only in older versions): never delete them
        try:
            delete_run_files(tables.location, run_files(tables.location, col, d, run_id))
            delete_run_files(
                tables.dead_letters.location, run_files(tables.dead_letters.location, col, d, run_id, "dl")
            )
        except Exception as e:  # best effort: vacuum removes them later
            log.debug("could not remove uncommitted files of %s: %s", d, e)


def _skipped_report(cfg: JobConfig, run_id: str, meta: Any, done: list[str]) -> dict[str, Any]:
    return {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "job": cfg.name,
        "status": "skipped",
        "dates": [],
        "skipped_committed": done,
        "model": {
            "uri": cfg.model.uri,
            "format": meta.format,
            "version": meta.version,
            "sha256": meta.sha256,
        },
        "rows": {"input": 0, "output": 0, "dead_letter": 0},
        "report_uri": None,
    }


def run_score(
    cfg: JobConfig, dates: list[str], run_id: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Score `dates`: prepare, run the streaming pipeline into the table's location, commit each
    date as one Delta transaction, write the report.

    Dates already committed with the same model, scoring config and input files are skipped (the
    run is a no-op for them) unless `force`; other committed dates are replaced.
    """
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    if run_id:
        check_run_id(run_id)
        _refuse_committed_run_id(cfg, run_id)
    run_id = run_id or new_run_id(cfg)
    log.debug("run %s: resolved config:\n%s", run_id, dump_config(cfg))
    meta = ModelSource.from_config(cfg).inspect()[0]
    check_output_writable(cfg, run_id)  # an unreachable or unwritable output fails here, in seconds
    dp = plan_dates(cfg, dates, meta.sha256, force)
    if dp.done:
        log.info(
            "already committed with this model, config and inputs, skipped: %s (--force rescores)", dp.done
        )
    for d, why in dp.why.items():
        log.info("scoring %s=%s: %s", cfg.input.partition_column, d, why)
    if not dp.todo:
        return _skipped_report(cfg, run_id, meta, dp.done)
    p = prepare(cfg, dp.todo, model_meta=meta, listed=dp.listed)
    return _execute(cfg, p, run_id, started, t_start, dp)


def _start_ray(cfg: JobConfig) -> tuple[float, PoolPlan]:
    """Connect to (or start) Ray and size the scoring pool. Returns (seconds taken, pool)."""
    from ray.data import DataContext

    t0 = time.perf_counter()
    ensure_ray(cfg)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    # Ray 2.60's datasource V2 parquet path spends seconds in its ListFiles step even for a few
    # local files (measured: 2-10 s vs 0.3 s for V1 on 4 files); we pass exact file lists anyway.
    ctx.use_datasource_v2 = False
    pool = plan_pool(
        cfg.predict,
        cluster_nodes(cfg.predict.label_selector),
        cluster_cpus=sum(n.get("CPU", 0.0) for n in cluster_nodes()),
    )
    return time.perf_counter() - t0, pool


def _execute(cfg: JobConfig, p: Prepared, run_id: str, started: datetime, t_start: float, dp: DatePlan):
    from pipeline.commit import OutputTables

    log.info(
        "run %s: %d input rows in %d files over %d date(s); model %s (sha256 %s…)",
        run_id,
        p.inputs.rows,
        len(p.inputs.paths),
        len(p.dates),
        p.model_meta.version,
        p.model_meta.sha256[:12],
    )
    t_ray, pool = _start_ray(cfg)
    col = cfg.input.partition_column
    tables = OutputTables.for_config(cfg)
    run = RunIdentity(
        run_id,
        cfg.name,
        p.model_meta.version,
        p.model_meta.sha256,
        cfg.digest(),
        cfg.scoring_digest(),
        seen=dict(dp.generations),
    )
    policy = CommitPolicy(cfg.output.key_columns, cfg.output.verify, cfg.output.max_bad_row_fraction)
    committed = committed_profiles(tables.predictions.open())
    committer = DateCommitter(
        tables,
        p.inputs,
        run,
        policy,
        cfg.drift,
        cfg.output.score_column,
        p.model_meta.score_reference,
        committed,
    )
    dates_scored = [part.date for part in p.inputs.partitions]
    written = [WrittenRows(tables.location.join(f"{col}={d}"), run_file_prefix(run_id)) for d in dates_scored]
    progress = ProgressView(
        start_counter(), p.inputs.rows, lambda: sum(w() for w in written), cfg.report.progress_interval_s
    ).start()
    committer.start()
    t0 = time.perf_counter()
    try:
        dead_letter = DeadLetterWriter(tables.dead_letters.location, col, cfg.output.key_columns, run_id)
        ds = build_dataset(p, pool, run_id, dead_letter=dead_letter, progress=progress.counter)
        ds = write_predictions(ds, tables.location, cfg.output, run_id)
    except BaseException as e:  # Ctrl-C too: the committer stops before the run ends
        committer.stop()
        progress.stop(completed=False)
        _discard_uncommitted(tables, [d for d in dates_scored if d not in committer.committed], run_id)
        user = _unwrap_user_error(e) if isinstance(e, Exception) else None
        if user is not None:
            raise user from None
        raise
    snapshot = progress.stop()
    t_exec = time.perf_counter() - t0
    timings = {"ray": t_ray, "exec": t_exec}
    ctx = _RunContext(cfg, p, run_id, started, t_start, dp, pool, tables, run, policy, committer, timings)
    try:
        return _finish(ctx, ds, snapshot, committed)
    except BaseException:  # refused, conflicting, Ctrl-C: what this run did not commit goes
        _discard_uncommitted(tables, dates_scored, run_id)
        raise


@dataclass
class _RunContext:
    cfg: JobConfig
    p: Prepared
    run_id: str
    started: datetime
    t_start: float
    dp: DatePlan
    pool: PoolPlan
    tables: Any
    run: RunIdentity
    policy: CommitPolicy
    committer: DateCommitter
    timings: dict[str, float | None]


def _finish(c: _RunContext, ds, snapshot: dict, committed: dict) -> dict[str, Any]:
    """After the pipeline: the early committer drains, the rest is profiled, drift-checked and
    committed; the report records what happened in any case."""
    cfg, p = c.cfg, c.p
    col = cfg.input.partition_column
    dates_scored = [part.date for part in p.inputs.partitions]
    t0 = time.perf_counter()
    c.committer.drain()
    t_drain = time.perf_counter() - t0
    early = c.committer.committed
    rest = [d for d in dates_scored if d not in early]
    t0 = time.perf_counter()
    profiles = {
        **c.committer.profiles,
        **profile_partitions(c.tables.location, col, rest, cfg.output.score_column, c.run_id),
    }
    checked = evaluate_drift(
        cfg.drift, committed, col, profiles, p.model_meta.sha256, p.model_meta.score_reference, only=rest
    )
    drift = {d: c.committer.drift[d] if d in c.committer.drift else checked[d] for d in dates_scored}
    c.timings["profile"] = time.perf_counter() - t0
    breaches = drift_reasons({d: drift[d] for d in rest}, col)
    for line in breaches:
        log.warning("score drift: %s", line)
    report = _report(cfg, p, c.run_id, c.started, c.dp, c.pool, snapshot, profiles, drift)
    report["stages"] = stage_metrics(ds, p.inputs.rows)
    report["ray_data_stats"] = _stats(ds)
    report["commits"] = c.committer.summary()
    if breaches and cfg.drift.on_breach == "fail":
        uri = _fail_report(c, report, "rejected", None)
        published = f"; committed before the breach: {', '.join(early)}" if early else ""
        raise DriftError(
            "score drift over the thresholds with drift.on_breach=fail; nothing published "
            f"for {', '.join(rest)}{published} (report: {uri}):\n  " + "\n  ".join(breaches)
        )
    t0 = time.perf_counter()
    commits = c.committer.commits + _commit_rest(c, report, rest, profiles, drift)
    c.timings["commit"] = time.perf_counter() - t0 + t_drain
    _fill_report(report, c, commits)
    if cfg.output.vacuum_after_run:
        report["vacuum"] = vacuum_tables(c.tables, cfg.output.retention_hours)
    report["report_uri"] = _write_report(cfg, p, c.run_id, report)
    return report


def _commit_rest(c: _RunContext, report: dict, rest: list[str], profiles: dict, drift: dict) -> list:
    from pipeline.table import CommitConflictError

    early = c.committer.committed
    try:
        return commit_partitions(
            c.tables,
            subset(c.p.inputs, rest),
            c.run,
            c.policy,
            extra={d: {"score_profile": profiles[d], "drift": drift[d]} for d in rest},
        )
    except CommitError as e:
        uri = _fail_report(c, report, "failed", str(e))
        published = f"; committed by this run before it: {', '.join(early)}" if early else ""
        raise CommitError(f"{e}\n  (not published: {', '.join(rest)}{published}; report: {uri})") from None
    except CommitConflictError as e:
        uri = _fail_report(c, report, "conflict", str(e))
        raise CommitConflictError(f"{e}\n  (report: {uri})") from None


def _fail_report(c: _RunContext, report: dict, status: str, error: str | None) -> str:
    report["status"] = status
    if error:
        report["error"] = error
    report["timings_s"] = _timings(c.p, c.timings, c.t_start)
    t_exec = c.timings["exec"] or 0
    report["throughput_rows_per_s"] = round(c.p.inputs.rows / t_exec, 1) if t_exec > 0 else None
    return _write_report(c.cfg, c.p, c.run_id, report)


def _fill_report(report: dict, c: _RunContext, commits: list) -> None:
    by_date = {x.date: x for x in commits}
    for entry in report["partitions"]:
        x = by_date[entry["partition"][c.cfg.input.partition_column]]
        entry.update(
            input_files=len(next(part.files for part in c.p.inputs.partitions if part.date == x.date)),
            input_rows=x.input_rows,
            output_rows=x.output_rows,
            dead_letter_rows=x.dead_letter_rows,
            output_files=x.output_files,
            table_version=x.version,
            dead_letter_table_version=x.dead_letter_version,
            dead_letter_reasons=x.dead_letter_reasons,
            outcome=x.outcome,
        )
    report["rows"] = {
        "input": c.p.inputs.rows,
        "output": sum(x.output_rows for x in commits),
        "dead_letter": sum(x.dead_letter_rows for x in commits),
    }
    report["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["timings_s"] = _timings(c.p, c.timings, c.t_start)
    t_exec = c.timings["exec"] or 0
    report["throughput_rows_per_s"] = round(c.p.inputs.rows / t_exec, 1) if t_exec > 0 else None


def vacuum_tables(tables, retention_hours: float, dry_run: bool = False) -> dict[str, Any]:
    """Delete files no reader of the last `retention_hours` needs: files removed from both tables
    longer ago than that, and files of runs that died before committing, once that old."""
    out: dict[str, Any] = {"retention_hours": retention_hours, "dry_run": dry_run}
    for name, t in (("predictions", tables.predictions), ("dead_letters", tables.dead_letters)):
        table = t.open()
        out[name] = [] if table is None else t.vacuum(table, retention_hours, dry_run)
    return out


def _timings(p: Prepared, t: dict[str, float | None], t_start: float) -> dict[str, float | None]:
    def r(v):
        return round(v, 3) if v is not None else None

    return {
        **{k: round(v, 3) for k, v in p.timings.items()},
        "ray_start_s": r(t.get("ray")),
        "pipeline_s": r(t.get("exec")),
        "profile_s": r(t.get("profile")),
        "commit_s": r(t.get("commit")),
        "total_s": round(time.perf_counter() - t_start, 3),
    }


def _report(
    cfg: JobConfig,
    p: Prepared,
    run_id: str,
    started: datetime,
    dp: DatePlan,
    pool: PoolPlan,
    snapshot: dict[str, Any],
    profiles: dict[str, dict],
    drift: dict[str, dict],
) -> dict[str, Any]:
    """The report before commit; counts and table versions are filled in once committed."""
    from pipeline.scorestats import merge_profiles

    col = cfg.input.partition_column
    rows_by_date = {part.date: part.rows for part in p.inputs.partitions}
    return {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "job": cfg.name,
        "status": "succeeded",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dates": p.dates,
        "skipped_committed": dp.done,
        "rescored_because": {d: why for d, why in dp.why.items() if d in p.dates},
        "config": shown_config(cfg),
        "config_hash": cfg.digest(),
        "model": {
            "uri": cfg.model.uri,
            "format": p.model_meta.format,
            "version": p.model_meta.version,
            "sha256": p.model_meta.sha256,
        },
        "pool": asdict(pool),
        "replicas": sorted(snapshot.get("replicas", []), key=lambda r: (r["node_id"], r["pid"])),
        "partitions": [
            {
                "partition": {col: d},
                "uri": p.output.join(f"{col}={d}").uri,
                "input_files": len(part.files),
                "input_rows": rows_by_date[d],
                "output_rows": profiles[d].get("count", 0) + profiles[d].get("nan", 0),
                "dead_letter_rows": None,
                "output_files": [],
                "table_version": None,
                "scores": profiles[d],
                "drift": drift[d],
            }
            for part in p.inputs.partitions
            for d in [part.date]
        ],
        "rows": {"input": p.inputs.rows, "output": None, "dead_letter": None},
        "scores": merge_profiles(list(profiles.values())),
        "score_reference": p.model_meta.score_reference,
        "drift": {
            "breach": any(c["breach"] for c in drift.values()),
            "on_breach": cfg.drift.on_breach,
            "thresholds": cfg.drift.model_dump(mode="json"),
        },
        "skipped_inputs": p.inputs.skipped,
    }


def _write_report(cfg: JobConfig, p: Prepared, run_id: str, report: dict[str, Any]) -> str:
    run_dir = p.output.join(RUNS_DIR, run_id)
    loc = run_dir.join("report.json")
    report["report_uri"] = loc.uri
    write_bytes(loc, json.dumps(report, indent=2).encode())
    write_bytes(run_dir.join("config.yaml"), dump_config(cfg).encode())
    if cfg.report.html:
        try:
            from pipeline.htmlreport import render_html

            write_bytes(run_dir.join("report.html"), render_html(report).encode())
        except Exception as e:  # the JSON report is the record; the page is a view of it
            log.warning("could not write report.html: %s", e)
    if cfg.report.prometheus_textfile:
        write_prometheus(cfg.report.prometheus_textfile, report)
    return loc.uri


def _stats(ds) -> str:
    try:
        return ds.stats()
    except Exception:  # stats are informative only
        return ""
