"""The job plan: the stages folded over one lazy Dataset, then commit and report.

    read -> preprocess (CPU tasks) -> predict (actor pool) -> write (staging) -> commit
    read -> preprocess + predict -> write, fused in one task per file   (predict.mode fused,
                                                                         CPU-only pools)

Nothing is materialized on the driver; `write_parquet` streams rows through all stages.
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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline.commit import CommitError, CommitPolicy, RunIdentity, commit_partitions, is_committed_with
from pipeline.config import JobConfig, dump_config
from pipeline.deadletter import DEAD_LETTER_DIR, DeadLetterWriter
from pipeline.errors import UserError, user_error_types
from pipeline.lock import PartitionLocks, clean_stale_staging
from pipeline.predict import FusedScorer, ModelSource, Predictor
from pipeline.preprocess import Preprocessor
from pipeline.progress import ProgressView, WrittenRows, start_counter
from pipeline.read import discover, read_dataset
from pipeline.report import (
    REPORT_VERSION,
    DriftError,
    drift_reasons,
    evaluate_drift,
    profile_partitions,
    stage_metrics,
    write_prometheus,
)
from pipeline.resources import PoolPlan, cluster_nodes, plan_pool
from pipeline.storage import Location, resolve, write_bytes
from pipeline.streamcommit import DateCommitter, subset
from pipeline.validate import ColumnRequirements, check_schemas
from pipeline.write import STAGING_DIR, staging_location, write_staged

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


def prepare(cfg: JobConfig, dates: list[str], model_meta: Any = None) -> Prepared:
    """Check config, input partitions and schemas, and the model (metadata + sha256)."""
    t0 = time.perf_counter()
    source = ModelSource.from_config(cfg)
    meta = model_meta if model_meta is not None else source.inspect()[0]
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
        resolve(cfg.input.uri, cfg.storage), dates, cfg.input.partition_column, cfg.input.on_bad_file
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


def already_committed(cfg: JobConfig, dates: list[str], model_sha256: str) -> list[str]:
    """Dates whose committed partition came from this model and this scoring config."""
    out = resolve(cfg.output.uri, cfg.storage)
    col, digest = cfg.input.partition_column, cfg.scoring_digest()
    return [d for d in dates if is_committed_with(out, col, d, model_sha256, digest)]


def run_score(
    cfg: JobConfig, dates: list[str], run_id: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Score `dates`: prepare, run the streaming pipeline into staging, commit, write the report.

    Dates already committed with the same model and scoring config are skipped (the run is a
    no-op for them) unless `force`; other committed dates are replaced.
    """
    from ray.data import DataContext

    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    run_id = run_id or new_run_id(cfg)
    log.info("run %s: resolved config:\n%s", run_id, dump_config(cfg))
    meta = ModelSource.from_config(cfg).inspect()[0]
    check_output_writable(cfg, run_id)  # an unreachable or unwritable output fails here, in seconds
    done = [] if force else already_committed(cfg, dates, meta.sha256)
    if done:
        log.info("already committed with this model and config, skipped: %s (--force rescores)", done)
    dates = [d for d in dates if d not in done]
    if not dates:
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
    p = prepare(cfg, dates, model_meta=meta)
    log.info(
        "run %s: %d input rows in %d files over %d date(s); model %s (sha256 %s…)",
        run_id,
        p.inputs.rows,
        len(p.inputs.paths),
        len(dates),
        p.model_meta.version,
        p.model_meta.sha256[:12],
    )
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
    t_ray = time.perf_counter() - t0

    staging = staging_location(p.output, run_id)
    col = cfg.input.partition_column
    dates_scored = [part.date for part in p.inputs.partitions]
    locks = PartitionLocks(p.output, col, dates_scored, run_id, cfg.output.lock_ttl_s)
    locks.acquire()
    try:
        removed = clean_stale_staging(
            p.output, p.output.join(STAGING_DIR), cfg.output.lock_ttl_s, keep=run_id
        )
        if removed:
            log.info("removed staging leftovers of dead runs: %s", removed)
        t0 = time.perf_counter()
        dead_letter = DeadLetterWriter(staging.join(DEAD_LETTER_DIR), col, cfg.output.key_columns, run_id)
        run = RunIdentity(
            run_id, cfg.name, p.model_meta.version, p.model_meta.sha256, cfg.digest(), cfg.scoring_digest()
        )
        policy = CommitPolicy(cfg.output.key_columns, cfg.output.verify, cfg.output.max_bad_row_fraction)
        committer = DateCommitter(
            p.output,
            staging,
            p.inputs,
            run,
            policy,
            cfg.drift,
            cfg.output.score_column,
            p.model_meta.score_reference,
        )
        counter = start_counter()
        staged = WrittenRows(staging)
        progress = ProgressView(
            counter,
            p.inputs.rows,
            lambda: staged() + sum(m.output_rows for m in committer.manifests),  # moved out by commits
            cfg.report.progress_interval_s,
        ).start()
        committer.start()
        try:
            ds = build_dataset(p, pool, run_id, dead_letter=dead_letter, progress=counter)
            ds = write_staged(ds, staging, cfg.output, run_id)
        except BaseException as e:  # Ctrl-C too: no commit may run once the locks are released
            committer.stop()
            progress.stop(completed=False)
            user = _unwrap_user_error(e) if isinstance(e, Exception) else None
            if user is not None:
                raise user from None
            raise
        snapshot = progress.stop()
        t_exec = time.perf_counter() - t0

        t_drain = time.perf_counter()
        committer.drain()
        t_drain = time.perf_counter() - t_drain
        t0 = time.perf_counter()
        early = committer.committed
        rest = [d for d in dates_scored if d not in early]
        profiles = {
            **committer.profiles,
            **profile_partitions(staging, col, rest, cfg.output.score_column),
        }
        checked = evaluate_drift(
            cfg.drift, p.output, col, profiles, p.model_meta.sha256, p.model_meta.score_reference, only=rest
        )
        drift = {d: committer.drift[d] if d in committer.drift else checked[d] for d in dates_scored}
        t_profile = time.perf_counter() - t0
        breaches = drift_reasons({d: drift[d] for d in rest}, col)
        for line in breaches:
            log.warning("score drift: %s", line)
        report = _report(cfg, p, run_id, started, done, pool, snapshot, profiles, drift)
        report["stages"] = stage_metrics(ds, p.inputs.rows)
        report["ray_data_stats"] = _stats(ds)
        report["commits"] = committer.summary()
        if breaches and cfg.drift.on_breach == "fail":
            report["status"] = "rejected"
            report["timings_s"] = _timings(p, t_ray, t_exec, t_profile, None, t_start)
            report["throughput_rows_per_s"] = round(p.inputs.rows / t_exec, 1) if t_exec > 0 else None
            uri = _write_report(cfg, p, run_id, report)
            published = f"; committed before the breach: {', '.join(early)}" if early else ""
            raise DriftError(
                "score drift over the thresholds with drift.on_breach=fail; nothing published "
                f"for {', '.join(rest)}{published} (report: {uri}):\n  " + "\n  ".join(breaches)
            )

        t0 = time.perf_counter()
        try:
            manifests = committer.manifests + commit_partitions(
                p.output,
                staging,
                subset(p.inputs, rest),
                run,
                policy,
                extra={d: {"score_profile": profiles[d], "drift": drift[d]} for d in rest},
            )
        except CommitError as e:
            report["status"] = "failed"
            report["error"] = str(e)
            report["timings_s"] = _timings(p, t_ray, t_exec, t_profile, None, t_start)
            uri = _write_report(cfg, p, run_id, report)
            published = f"; committed by this run before it: {', '.join(early)}" if early else ""
            where = f"not published: {', '.join(rest)}{published}; report: {uri}"
            raise CommitError(f"{e}\n  ({where})") from None
    finally:
        locks.release()
    t_commit = time.perf_counter() - t0 + t_drain
    by_date = {m.partition[col]: m for m in manifests}
    for entry in report["partitions"]:
        m = by_date[entry["partition"][col]]
        entry.update(
            input_files=len(m.input_files),
            input_rows=m.input_rows,
            output_rows=m.output_rows,
            dead_letter_rows=m.dead_letter_rows,
            output_files=[f.name for f in m.output_files],
        )
    report["rows"] = {
        "input": p.inputs.rows,
        "output": sum(m.output_rows for m in manifests),
        "dead_letter": sum(m.dead_letter_rows for m in manifests),
    }
    report["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["timings_s"] = _timings(p, t_ray, t_exec, t_profile, t_commit, t_start)
    report["throughput_rows_per_s"] = round(p.inputs.rows / t_exec, 1) if t_exec > 0 else None
    report["report_uri"] = _write_report(cfg, p, run_id, report)
    return report


def _timings(p: Prepared, t_ray, t_exec, t_profile, t_commit, t_start) -> dict[str, float | None]:
    return {
        **{k: round(v, 3) for k, v in p.timings.items()},
        "ray_start_s": round(t_ray, 3),
        "pipeline_s": round(t_exec, 3),
        "profile_s": round(t_profile, 3),
        "commit_s": round(t_commit, 3) if t_commit is not None else None,
        "total_s": round(time.perf_counter() - t_start, 3),
    }


def _report(
    cfg: JobConfig,
    p: Prepared,
    run_id: str,
    started: datetime,
    done: list[str],
    pool: PoolPlan,
    snapshot: dict[str, Any],
    profiles: dict[str, dict],
    drift: dict[str, dict],
) -> dict[str, Any]:
    """The report before commit; counts are filled from the manifests once committed."""
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
        "skipped_committed": done,
        "config": cfg.model_dump(mode="json"),
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
