"""One scoring run, as its phases:

    preflight  pipeline/run/preflight.py   model, output probe, each date's state in the log, inputs
    execute    pipeline/run/execute.py     Ray, the pool, the stages folded over one lazy Dataset,
                                           written under the table (dates commit as they complete)
    commit     pipeline/commit/            the remaining dates: reconciled, drift-checked, one Delta
                                           transaction each
    finalize   pipeline/run/finalize.py    the run report

`run_score` reads as that list; what a phase measures goes into the shared `RunContext`."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import threading
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from pipeline.commit.groups import TopKCheck
from pipeline.commit.partitions import (
    CommitPolicy,
    RunIdentity,
    brief_error,
    commit_partitions,
    withdraw_date,
)
from pipeline.commit.streaming import DateCommitter, subset
from pipeline.commit.tables import (
    OutputTables,
    WrittenRows,
    list_run_files,
    run_file_prefix,
    vacuum_tables,
)
from pipeline.config import JobConfig
from pipeline.errors import CommitError, DriftError, RunStopped, StallError, StorageError, find_known_error
from pipeline.filestats import ReadKeys
from pipeline.memory import reuse_freed_memory
from pipeline.quality.drift import (
    commit_profiles,
    committed_profiles,
    drift_reasons,
    evaluate_heads,
    run_references,
)
from pipeline.quality.profiles import profile_partitions
from pipeline.reporting.metrics import stage_metrics
from pipeline.reporting.progress import InProcessCounter, ProgressView, start_counter
from pipeline.reporting.runs import RUNS_DIR, input_keys_dir
from pipeline.reporting.schema import Commits, RunReport
from pipeline.run.attempt import Attempt, AttemptRecord
from pipeline.run.clock import monotonic_start, seconds_to_first, take_origin
from pipeline.run.context import RunContext
from pipeline.run.execute import (
    build_dataset,
    choose_runner,
    fused_scorer,
    fused_task_cap,
    local_pool,
    ray_running,
    run_data_context,
    stage_objects,
    start_ray,
)
from pipeline.run.finalize import (
    build_report,
    fail_report,
    fill_report,
    ray_data_stats,
    skipped_report,
    stopped_report,
    write_report,
)
from pipeline.run.local import DateFiles, LocalRun, preload
from pipeline.run.pool import start_replicas
from pipeline.run.preflight import Preflight, preflight, scoring_identity
from pipeline.run.resources import PoolPlan
from pipeline.run.resume import Adoption
from pipeline.run.watchdog import Hooks, Watchdog, supervise
from pipeline.stages.deadletter import DeadLetterWriter
from pipeline.stages.topk import TopKSpec, default_partitions, top_k_dataset
from pipeline.storage import delete_dir, resolve

log = logging.getLogger("batchscore")


def _discard_uncommitted(
    tables, dates: list[str], run_id: str, attempt: str = "", keep: frozenset[str] = frozenset()
) -> None:
    """Delete an attempt's files of the `dates` it never committed (not in the log, so no reader
    has them); dates it committed are skipped. Only this process's attempt, or one proved dead
    (pipeline/run/attempt.py): never a live process's files. A killed run's files wait for its
    rerun or for vacuum. `keep` (file-system paths): files adopted by this run or a live one
    (pipeline/run/resume.py); a dead attempt's file that a table references now stays too."""
    col = tables.partition_column
    try:  # each table apart: a race's survivor may have committed only a date's dead letters
        logs = [(t, t.open()) for t in (tables.predictions, tables.dead_letters)]
        referenced = {
            unquote(u.split("://", 1)[-1]) for (_, snap) in logs if snap is not None for u in snap.file_uris()
        }
    except Exception as e:  # storage down: the error being raised says more; vacuum cleans up
        log.debug("could not read the tables' logs to remove uncommitted files: %s", e)
        return
    for d in dates:
        for (table, snapshot), kind in zip(logs, ("part", "dl"), strict=True):
            if table.ever_committed_by(snapshot, col, d, run_id, attempt):
                continue  # its files are in the log (maybe only in older versions): never delete them
            try:  # by name only: a file cut short by the failure has no footer to read
                infos = list_run_files(table.location, col, d, run_id, kind, attempt)
                gone = [i for i in infos if i.path not in keep and i.path not in referenced]
                table.delete_files([posixpath.relpath(i.path, table.location.path) for i in gone])
            except Exception as e:  # best effort (pyarrow's or delta-rs's errors): vacuum removes them
                log.debug("could not remove uncommitted files of %s: %s", d, e)


def _discard_dead_attempts(tables, attempt: Attempt, adoption: Adoption) -> None:
    """The files of earlier attempts of this run id that died (killed, node lost) before their
    commit, and of dead attempts of any run that worked on this run's dates, and their input key
    records: nothing will ever commit them, except the files this run (or a live one) adopted."""
    mine = set(attempt.record.dates)
    keep = frozenset(adoption.keep)
    dead = [(r, r.dates) for r in attempt.dead]
    dead += [
        (r, sorted(set(r.dates) & mine))
        for r in adoption.dead
        if r.attempt not in {x.attempt for x in attempt.dead}
    ]
    for r, dates in dead:
        _discard_uncommitted(tables, dates, r.run_id, r.attempt, keep)
        with contextlib.suppress(OSError):
            delete_dir(tables.location.join(RUNS_DIR, r.run_id, input_keys_dir(r.attempt)))


def _adopt(cfg: JobConfig, pre: Preflight, runner: tuple[str, str], force: bool) -> Adoption:
    """The finished units of dead attempts this run takes over (pipeline/run/resume.py), written
    into this attempt's record before any file is deleted; none with `force`, top-K or the Ray
    modes that do not record units (they rescore from zero)."""
    from pipeline.commit.tables import digest_of
    from pipeline.run.resume import find_adoption

    p = pre.prepared
    if p is None:
        return Adoption()
    model = digest_of(p.model_meta.sha256, scoring_identity(cfg, p.model_meta))
    pre.attempt.record_units([], model=model)  # the identity its own units are recorded under
    why_not = _why_no_resume(cfg, runner, force)
    if why_not:
        log.info("resume: %s: the dates are scored from zero", why_not)
        return Adoption()
    tables = OutputTables.for_config(cfg)
    adoption = find_adoption(
        pre.attempt, model, p.inputs, tables.predictions.location, tables.dead_letters.location
    )
    pre.attempt.record_units(adoption.units)  # from here on no other rerun deletes them under us
    for r in adoption.dead:  # copies: their status stays "running" in `adoption` for the discard
        pre.attempt.mark_dead(AttemptRecord.from_json(r.to_json()))
    _log_adoption(adoption, p.inputs.rows)
    return adoption


def _why_no_resume(cfg: JobConfig, runner: tuple[str, str], force: bool) -> str | None:
    if force:
        return "--force"
    if cfg.output.top_k is not None:
        return "output.top_k (groups span units)"
    if cfg.challengers:  # an adopted unit would leave its rows out of the challengers' tables
        return "challengers (scored beside the champion's units, not recorded per table)"
    if runner[0] == "ray" and cfg.predict.mode in ("fused", "staged"):
        return f"predict.mode {cfg.predict.mode} does not record finished units"
    return None


def _log_adoption(adoption: Adoption, rows: int) -> None:
    sources = sorted({u["adopted_from"] for u in adoption.units})
    log.info(
        "resume: %d rows adopted (%d units, %d input files, from %s), %d rows to score",
        adoption.rows,
        len(adoption.units),
        len(adoption.inputs),
        ", ".join(sources) or "no dead attempt",
        rows - adoption.rows,
    )
    for why in adoption.refused[:10]:
        log.info("resume: not adopted, scored again: %s", why)


def run_score(cfg: JobConfig, dates: list[str], run_id: str | None = None, force: bool = False) -> RunReport:
    """Score `dates`: preflight, execute the streaming pipeline into the table's location (dates
    commit as they complete), commit the rest (one Delta transaction per date), finalize.

    Dates already committed with the same model, scoring config and input files are skipped (the
    run is a no-op for them) unless `force`; other committed dates are replaced.
    """
    origin = take_origin()
    # total_s counts from the same origin as first_batch_s (the process start for `score`, else
    # this call): the first batch can never come after the whole run
    started, t_start = datetime.now(timezone.utc), monotonic_start(origin)
    runner = choose_runner(cfg, ray_running())
    functions = [cfg.preprocessing.function] if cfg.preprocessing.function else []
    reuse_freed_memory()  # the driver's Arrow buffers (the local runner's scoring, the checks)
    if runner[0] == "local":
        local_pool(cfg)  # refuses what the local runner cannot do (top-K, a GPU) before any work
        preload(objects=functions)
    elif functions:  # its import (often torch's) done before the replicas start, not beside them
        preload(modules=(), objects=functions)
    side = _plan_challengers(cfg, dates, force)
    pre = preflight(cfg, dates, run_id, force, also=side.needed() if side else ())
    with pre.attempt.held():  # its record says how it ended; a killed one's heartbeat stops
        adoption = _adopt(cfg, pre, runner, force)
        _discard_dead_attempts(OutputTables.for_config(cfg), pre.attempt, adoption)
        if side is not None:  # what dead attempts wrote into the challengers' tables
            side.discard_dead(pre.attempt)
        if pre.prepared is None:
            return skipped_report(cfg, pre.run_id, pre.model_meta, pre.dates.done)
        ctx = _start(cfg, pre, started, t_start, runner, adoption, side)
        if side is not None:
            ctx.challengers = side
            side.start(ctx)
        return _score(ctx, origin)


def _plan_challengers(cfg: JobConfig, dates: list[str], force: bool):
    """The challengers scored in this pass (pipeline/run/challengers.py); None without any."""
    if not cfg.challengers:
        return None
    from pipeline.run.challengers import ChallengerSet

    return ChallengerSet.plan(cfg, dates, force)


def _score(ctx: RunContext, origin) -> RunReport:
    """Execute, then finish; on any failure what this attempt did not commit goes."""
    try:
        ds, snapshot = _execute(ctx)
        ctx.timings["first_batch"] = seconds_to_first(snapshot, "scored", origin)
        if ctx.timings.get("ray_up_at") is not None:
            ctx.timings["first_batch_after_ray"] = seconds_to_first(
                snapshot, "scored", ctx.timings["ray_up_at"]
            )
        try:
            return _finish(ctx, ds, snapshot)
        except BaseException as e:  # refused, conflicting, Ctrl-C: what this run did not commit goes
            _discard_uncommitted(ctx.tables, ctx.dates, ctx.run_id, ctx.run.attempt)
            if _is_storage_failure(e):
                raise _as_storage_error(e) from None
            raise
    except BaseException:
        if ctx.challengers is not None:  # their files of dates they did not commit
            ctx.challengers.abandon(ctx)
        raise
    finally:
        if ctx.replicas is not None:  # a failure before the pool's own `with`
            ctx.replicas.close()
        if ctx.policy.read_keys is not None:  # the input's recorded fingerprints: used up
            try:
                delete_dir(ctx.policy.read_keys.location)
            except OSError as e:
                log.debug("could not remove %s: %s", ctx.policy.read_keys.location.uri, e)


def _is_storage_failure(e: BaseException) -> bool:
    """An S3 or file-system error (pyarrow, delta-rs) that batchscore did not explain itself."""
    from deltalake.exceptions import CommitFailedError, DeltaError

    return isinstance(e, OSError) or (isinstance(e, DeltaError) and not isinstance(e, CommitFailedError))


def _as_storage_error(e: BaseException) -> StorageError:
    """A storage failure after scoring (profiles, reconciliation, commits, the report) as an error
    that says what is left, instead of a traceback (exit 1)."""
    return StorageError(
        f"storage failed while committing this run's dates ({type(e).__name__}: {brief_error(e)}). "
        "Dates this run committed stay committed, the others are not published (its files of them are "
        "left to vacuum): run the same command again; committed dates are skipped, the others scored again"
    )


def _start(
    cfg: JobConfig,
    pre: Preflight,
    started: datetime,
    t_start: float,
    runner: tuple[str, str],
    adoption: Adoption,
    side: Any = None,
) -> RunContext:
    """Ray and the pool (the duplicate-key check beside Ray's start, the actors mode's replicas
    started as soon as Ray is up, the challengers' placement decided before); the run's
    identity, its commit policy and its committer. `side`: the run's ChallengerSet, or None."""
    p = pre.prepared
    _log_start(pre, runner)
    dups = _duplicate_check_beside_ray_start(cfg, p, runner[0], pre.attempt, adoption)
    t_ray, pool = start_ray(cfg) if runner[0] == "ray" else (None, local_pool(cfg))
    if side is not None:  # before the champion's replicas start: they take the champion's share
        pool = _place_challengers(cfg, pool, side, p)
    ray_up_at = time.time() if runner[0] == "ray" else None  # wall clock, as the workers count
    tables = OutputTables.for_config(cfg)
    policy = _commit_policy(cfg, tables, pre.run_id, pre.attempt.id)
    if dups is None:  # on Ray tasks: before the replicas take the CPUs they need
        _check_duplicate_keys(cfg, p, pre.attempt, adoption)
    if runner[0] == "ray" and pool.mode != "actors" and adoption.units:  # predict.mode auto: fused
        log.info(
            "resume: predict.mode %s does not record finished units: the dates are scored from zero",
            pool.mode,
        )
        adoption = Adoption()
    replicas = None
    if runner[0] == "ray" and pool.mode == "actors":
        scoring = _scoring_plan(p, adoption)
        replicas = start_replicas(scoring, pool, tables, pre.run_id, pre.attempt.id, policy.read_keys)
    try:
        ctx = _context(cfg, pre, (started, t_start), pool, tables, policy, dups)
    except BaseException:  # refused (duplicate keys, types): the replicas started for nothing
        if replicas is not None:
            replicas.close()
        raise
    ctx.run.adopted = adoption.files
    _adopt_input_keys(policy, adoption)
    ctx.timings.update(ray=t_ray, ray_up_at=ray_up_at)
    ctx.replicas, ctx.attempt, ctx.adoption = replicas, pre.attempt, adoption
    return ctx


def _place_challengers(cfg: JobConfig, pool: PoolPlan, side: Any, p: Any) -> PoolPlan:
    """The pool plan's placement of the challengers (pipeline/run/resources.py plan_placement),
    logged; the champion's pool keeps its share of the replicas."""
    from dataclasses import replace

    from pipeline.run.resources import cluster_nodes, plan_placement, replica_memory_gb

    nodes = cluster_nodes(cfg.predict.label_selector) if pool.runner == "ray" else []
    dates = [part.date for part in p.inputs.partitions]
    place = plan_placement(
        cfg.predict.challengers_placement,
        pool,
        int(p.model_meta.weight_bytes or 0),
        side.sizes(dates),
        replica_memory_gb(cfg.predict, nodes, pool),
    )
    pools = ", ".join(f"{k} {v}" for k, v in place.replicas.items())
    log.info("challengers placement: %s (%s); replicas: %s", place.challengers, place.why, pools)
    return replace(pool, max_replicas=place.replicas.get("champion", pool.max_replicas), placement=place)


def _context(cfg: JobConfig, pre: Preflight, start: tuple, pool, tables, policy, dups) -> RunContext:
    """The checks left once Ray is up (the duplicate keys checked beside its start, feature
    types), the run's identity and its committer."""
    p, run_id = pre.prepared, pre.run_id
    if dups is not None:  # on this machine's threads, beside Ray's start
        dups.result()
    _check_untyped_features(cfg, p, tables)
    meta = p.model_meta
    run = RunIdentity(
        run_id,
        cfg.name,
        meta.version,
        meta.sha256,
        cfg.digest(),
        scoring_identity(cfg, meta),
        seen=pre.dates.generations,
        attempt=pre.attempt.id,
        check_lease=pre.attempt.check_lease,
        model_registry=meta.registry.record() if meta.registry is not None else None,
    )
    heads = cfg.output.value_columns
    committed = committed_profiles(tables.predictions.open(), first_head=heads[0])
    committer = DateCommitter(
        tables,
        p.inputs,
        run,
        policy,
        cfg.drift,
        heads,
        run_references(cfg.output, meta),
        committed,
        # top-K: the shuffle by group ends only when every date is scored, so dates commit at the end
        early=cfg.output.top_k is None,
    )
    return RunContext(cfg, p, run_id, *start, pre.dates, pool, tables, run, policy, committer, committed, {})


def _adopt_input_keys(policy: CommitPolicy, adoption: Adoption) -> None:
    """The adopted units' input key records, as their reads made them, among this attempt's own:
    the commit reconciles the whole date without reading the adopted input again."""
    if policy.read_keys is None:
        return
    for u in adoption.units:
        for i in u["inputs"]:
            if i.get("keys"):
                with contextlib.suppress(OSError, KeyError):  # without it the commit reads the file
                    policy.read_keys.write_record(u["date"], [i["path"]], i["keys"], i.get("row_groups"))


def _scoring_plan(p, adoption: Adoption | None):
    """The prepared run less the adopted input files: what this process reads and scores."""
    from dataclasses import replace

    from pipeline.run.resume import remaining

    if adoption is None or not adoption.inputs:
        return p
    return replace(p, inputs=remaining(p.inputs, adoption.inputs))


def _log_start(pre: Preflight, runner: tuple[str, str]) -> None:
    p = pre.prepared
    log.info(
        "run %s (attempt %s): %d input rows in %d files over %d date(s); model %s (sha256 %s…)%s",
        pre.run_id,
        pre.attempt.id,
        p.inputs.rows,
        len(p.inputs.paths),
        len(p.dates),
        p.model_meta.version,
        p.model_meta.sha256[:12],
        f" from {p.model_meta.registry.described()}" if p.model_meta.registry is not None else "",
    )
    log.info("runner: %s (%s)", *runner)


def _commit_policy(cfg: JobConfig, tables, run_id: str, attempt: str) -> CommitPolicy:
    """How each date is checked before its commit; with output.verify 'keys', where the read
    tasks record the input's key fingerprints."""
    read_keys = None
    if cfg.output.verify == "keys":
        # per attempt: an earlier attempt's records of this run id describe other reads
        where = tables.location.join(RUNS_DIR, run_id, input_keys_dir(attempt))
        # top-K reconciles groups: the input's group keys are what its commit compares
        keys = cfg.output.top_k.group_by if cfg.output.top_k is not None else cfg.output.key_columns
        read_keys = ReadKeys(where, list(keys), cfg.input.partition_column)
    return CommitPolicy(
        cfg.output.key_columns,
        cfg.output.verify,
        cfg.output.max_bad_row_fraction,
        read_keys,
        top_k=TopKCheck.from_config(cfg) if cfg.output.top_k is not None else None,
    )


def _duplicate_check_beside_ray_start(cfg: JobConfig, p, runner: str, attempt: Attempt, adoption: Adoption):
    """A new local Ray takes seconds to start (6 s on a 16-CPU GPU machine), waiting mostly on
    its processes: the duplicate check runs on this machine's threads meanwhile instead of on Ray
    tasks after it, off the path to the first scored batch. None: checked after (a cluster)."""
    from concurrent.futures import ThreadPoolExecutor

    if runner != "ray" or ray_running() or cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return None
    pool = ThreadPoolExecutor(1, thread_name_prefix="batchscore-duplicates")
    future = pool.submit(_check_duplicate_keys, cfg, p, attempt, adoption, on_ray=False)
    pool.shutdown(wait=False)
    return future


def _check_duplicate_keys(
    cfg: JobConfig, p, attempt: Attempt | None = None, adoption: Adoption | None = None, on_ray: bool = True
) -> None:
    """Keys that repeat within a date: refused (exit 2, nothing scored), or found for the
    preprocess tasks to send to the dead letters, or allowed; counted in the report either way.
    A date a dead attempt checked over the very same input files and found free of repeated keys
    is not read again (resume); the dates found free go into this attempt's record."""
    from pipeline.commit.partitions import identity_of
    from pipeline.stages.duplicates import find_duplicates, refuse

    t0 = time.perf_counter()
    keys = list(cfg.output.key_columns)
    digests = {part.date: identity_of(part, "", "").inputs for part in p.inputs.partitions}
    known = adoption.known_unique(keys, digests) if adoption is not None else set()
    p.duplicates = find_duplicates(subset(p.inputs, [d for d in digests if d not in known]), keys, on_ray)
    p.timings["duplicate_check_s"] = time.perf_counter() - t0
    if known:
        log.info("resume: %d date(s) already checked for repeated keys over the same input", len(known))
    if attempt is not None:
        unique = {d: digest for d, digest in digests.items() if d not in p.duplicates.dates}
        attempt.record_units([], unique_keys={"columns": keys, "dates": unique})
    for date, dup in sorted(p.duplicates.dates.items()):
        log.warning(
            "%s=%s: %d key(s) occur more than once in the input (%d rows); output.duplicate_keys=%s",
            cfg.input.partition_column,
            date,
            len(dup.keys),
            dup.rows,
            cfg.output.duplicate_keys,
        )
    if cfg.output.duplicate_keys == "fail":
        refuse(p.duplicates)


def _check_untyped_features(cfg: JobConfig, p, tables) -> None:
    """A feature spec without dtype (saved before types were recorded): the type of the input
    of the last date this model scored stands in for it (pipeline/stages/validate.py)."""
    import pyarrow.parquet as pq

    from pipeline.commit.tables import commits_of_history
    from pipeline.stages.validate import check_untyped_against_history

    req = p.requirements
    if not any(f.dtype is None for f in req.features.values()):
        return

    def read_schema(uri: str):
        loc = resolve(uri, cfg.storage)
        return pq.read_schema(loc.path, filesystem=loc.fs)

    table = tables.predictions.open()
    history = commits_of_history(table, 100) if table is not None else []
    check_untyped_against_history(p.inputs, req, history, p.model_meta.sha256, read_schema)


def _execute(ctx: RunContext):
    """The pipeline, streaming from the input files to files under the table, with progress on
    stderr; the committer commits each date as soon as its rows are all written. The watchdog
    stops a run that stalls (or, with run.on_deadline fail, is still going at its deadline)."""
    cfg, col, tables = ctx.cfg, ctx.cfg.input.partition_column, ctx.tables
    prefix = run_file_prefix(ctx.run_id, attempt=ctx.run.attempt)
    written = [WrittenRows(tables.location.join(f"{col}={d}"), prefix) for d in ctx.dates]
    # the actors mode's replicas hand their counts to the driver with their units' results
    in_process = ctx.pool.runner == "local" or ctx.pool.mode == "actors"
    counter = InProcessCounter() if in_process else start_counter()
    progress = ProgressView(
        counter,
        ctx.p.inputs.rows - ctx.adopted_rows,
        lambda: sum(w() for w in written),
        cfg.report.progress_interval_s,
    ).start()
    hooks = Hooks()
    dog = _watchdog(ctx, progress, hooks).start()
    ctx.committer.start()
    t0 = time.perf_counter()
    try:
        ds = supervise(lambda: _run_pipeline(ctx, progress.counter, hooks), dog)
    except BaseException as e:  # Ctrl-C too: the committer stops before the run ends
        dog.stop()
        ctx.deadline = dog.summary()
        ctx.committer.stop()
        progress.stop(completed=False)
        left = [d for d in ctx.dates if d not in ctx.committer.committed]
        _discard_uncommitted(tables, left, ctx.run_id, ctx.run.attempt)
        if isinstance(e, RunStopped):
            ctx.timings["exec"] = time.perf_counter() - t0
            raise _stopped(ctx, e, progress.last) from None
        known = find_known_error(e) if isinstance(e, Exception) else None
        if known is not None:
            raise known from None
        raise
    dog.stop()
    ctx.deadline = dog.summary()
    snapshot = progress.stop()
    ctx.timings["exec"] = time.perf_counter() - t0
    return ds, snapshot


def _watchdog(ctx: RunContext, progress: ProgressView, hooks: Hooks) -> Watchdog:
    from pipeline.config import resolve_deadline

    run = ctx.cfg.run
    if ctx.pool.runner != "local":  # Ray: the replicas that registered, for a stall's report

        def replicas() -> list[str]:
            return [
                f"replica pid {r['pid']} on node {str(r['node_id'])[:12]} ({r['device']})"
                for r in progress.last.get("replicas", [])
            ]

        hooks.activity.append(replicas)
    return Watchdog(
        progress,
        ctx.p.inputs.rows - ctx.adopted_rows,
        run.stall_timeout_s,
        resolve_deadline(run.deadline, ctx.started) if run.deadline else None,
        run.on_deadline,
        ctx.cfg.report.prometheus_textfile,
        ctx.cfg.name,
        hooks,
    )


def _stopped(ctx: RunContext, e: RunStopped, snapshot: dict) -> RunStopped:
    """The watchdog's error with what was published and where the report is."""
    status = "stalled" if isinstance(e, StallError) else "deadline"
    done = ctx.committer.committed
    left = [d for d in ctx.dates if d not in done]
    published = (
        f"committed before it stopped: {', '.join(done)}; not published: {', '.join(left)}"
        if done
        else f"nothing published (not published: {', '.join(left)})"
    )
    try:
        uri = stopped_report(ctx, snapshot, status, str(e))
    except Exception as err:  # storage may be what stalled: the error still says what happened
        uri = f"not written ({type(err).__name__}: {brief_error(err)})"
    stopped = type(e)(f"{e}\n  {published}; report: {uri}")
    stopped.abandoned = e.abandoned
    return stopped


def _run_pipeline(ctx: RunContext, counter, hooks: Hooks):
    """The lazy pipeline, executed by its write, under this run's Ray Data settings (the caller's
    own Ray Data context is left as it was)."""
    cfg, tables = ctx.cfg, ctx.tables
    col = cfg.input.partition_column
    dead_letter = DeadLetterWriter(
        tables.dead_letters.location, col, cfg.output.key_columns, ctx.run_id, ctx.run.attempt
    )
    if ctx.pool.runner == "local":
        return _run_local(ctx, counter, dead_letter, hooks)
    if ctx.replicas is not None:
        return _run_replicas(ctx, counter, hooks)
    from pipeline.stages.write import write_predictions, write_tasks_at_once  # Ray Data: now

    # a top-K run's challengers: every model in each task or replica, each through the shuffle
    models = ctx.challengers.hook_ray(ctx, dead_letter) if ctx.challengers is not None else None
    with run_data_context():
        ds = build_dataset(
            ctx.p,
            ctx.pool,
            ctx.run_id,
            dead_letter=dead_letter,
            progress=counter,
            read_keys=ctx.policy.read_keys,
            models=models,
        )
        if cfg.output.top_k is not None:
            partitions = cfg.output.top_k.partitions or default_partitions(ctx.p.inputs.rows)
            if models is not None:
                ds = models.top_k_dataset(ds, partitions)
            else:
                ds = top_k_dataset(ds, TopKSpec.from_config(cfg), partitions, dead_letter)
        writes = write_tasks_at_once(ctx.pool.cluster_cpus, fused_task_cap(cfg, ctx.pool))
        return write_predictions(ds, tables.location, cfg.output, ctx.run_id, writes, ctx.run.attempt)


def _run_local(ctx: RunContext, counter, dead_letter: DeadLetterWriter, hooks: Hooks) -> LocalRun:
    """The same stages on threads in this process (pipeline/run/local.py), over the input not
    adopted; each finished unit goes into the attempt's record (adoptable from then on)."""
    from pipeline.run.local import local_units
    from pipeline.run.resume import unit_entry
    from pipeline.stages.read import PlannedParquet

    p = _scoring_plan(ctx.p, ctx.adoption)
    pre, kwargs = stage_objects(p, ctx.pool, ctx.run_id, dead_letter=dead_letter, progress=counter)
    units = local_units(PlannedParquet(p.inputs, []), ctx.cfg.output.target_rows_per_file)

    def finished(unit: int, notes) -> None:
        if ctx.attempt is not None:
            ctx.attempt.record_units([unit_entry(units[unit], notes)])

    files = DateFiles(
        ctx.tables.location,
        ctx.cfg.output,
        ctx.run_id,
        {u: len(pieces) for u, pieces in enumerate(units)},
        ctx.run.attempt,
        on_unit=finished,
    )
    scorer = fused_scorer(p, pre, kwargs)
    if ctx.challengers is not None:  # one read and preprocessing for every model
        unit_dates = {u: pieces[0][1] for u, pieces in enumerate(units)}
        scorer, files = ctx.challengers.hook_local(ctx, scorer, files, dead_letter, unit_dates)
    run = LocalRun(p, scorer, ctx.pool.max_replicas, files, ctx.policy.read_keys, units)
    hooks.halt.append(run.halt)
    hooks.activity.append(run.activity)
    return run.run()


def _run_replicas(ctx: RunContext, counter, hooks: Hooks):
    """Replicas that take each unit of input through every stage and write its files themselves
    (pipeline/run/replicas.py, pipeline/run/pool.py), started by `_start`; the driver gets one
    small record per unit, and records the unit in the attempt's record (adoptable from then on)."""
    from pipeline.run.replicas import ReplicaRun

    started = ctx.replicas
    units = len(started.plan.units)
    run = ReplicaRun(started.pool.size if started.pool is not None else 0)
    if started.pool is None:  # every unit adopted
        return run
    p = _scoring_plan(ctx.p, ctx.adoption)
    pre, kwargs = stage_objects(
        p, ctx.pool, ctx.run_id, dead_letter=started.dead_letter, progress=started.progress
    )
    stop = threading.Event()  # the watchdog's or Ctrl-C's stop, seen as the next unit comes back
    hooks.halt.append(stop.set)
    hooks.activity.append(lambda: [f"{len(run.records)} of {units} units done, others in flight or waiting"])
    scorer = fused_scorer(p, pre, kwargs)
    if ctx.challengers is not None:  # each replica holds every model and writes every table
        scorer = ctx.challengers.hook_replicas(ctx, scorer, started.dead_letter)
    try:
        with started.pool:
            for record in started.pool.records(started.plan, scorer, counter, stop):
                run.add(record)
                _record_replica_unit(ctx, started.plan, record)
    finally:  # the challengers' own pools: every unit's files closed by now, or the run failed
        if ctx.challengers is not None:
            ctx.challengers.close_pools()
    return run


def _record_replica_unit(ctx: RunContext, plan, record: dict) -> None:
    """A replica's finished unit into the attempt's record (its files are closed)."""
    import json

    from pipeline.run.resume import unit_entry
    from pipeline.unitwork import UnitNotes

    if ctx.attempt is None:
        return
    notes = UnitNotes(**json.loads(record["notes"]))
    ctx.attempt.record_units([unit_entry(plan.units[int(record["unit"])], notes)])


def _finish(c: RunContext, ds, snapshot: dict) -> RunReport:
    """After the pipeline: the early committer drains, the rest is profiled, drift-checked and
    committed; the report records what happened in any case."""
    cfg, p = c.cfg, c.p
    col = cfg.input.partition_column
    dates_scored = c.dates
    t0 = time.perf_counter()
    c.committer.drain()
    _check_early_commits_unchanged(c)
    t_drain = time.perf_counter() - t0
    early = c.committer.committed
    rest = [d for d in dates_scored if d not in early]
    profiles, drift = _profile_rest(c, rest)
    breaches = drift_reasons({d: drift[d] for d in rest}, col)
    for line in breaches:
        log.warning("score drift: %s", line)
    report = build_report(c, snapshot, profiles, drift)
    if hasattr(ds, "stats_text"):  # the local runner's threads, or the replicas' records
        report.stages, report.ray_data_stats = ds.stages(), ds.stats_text()
    else:
        report.stages = stage_metrics(ds, p.inputs.rows)
        report.ray_data_stats = ray_data_stats(ds)
    report.commits = Commits(**c.committer.summary())
    if breaches and cfg.drift.on_breach == "fail":
        uri = fail_report(c, report, "rejected", None)
        mine = c.committer.published
        published = f"; committed before the breach: {', '.join(mine)}" if mine else ""
        raise DriftError(
            "score drift over the thresholds with drift.on_breach=fail; nothing published "
            f"for {', '.join(rest)}{published} (report: {uri}):\n  " + "\n  ".join(breaches)
        )
    t0 = time.perf_counter()
    commits = c.committer.commits + _commit_rest(c, report, rest, profiles, drift)
    c.timings["commit"] = time.perf_counter() - t0 + t_drain
    fill_report(report, c, commits)
    if c.challengers is not None:  # after the champion's commits: theirs, then the comparison
        c.challengers.finish(c, report)
    if cfg.output.vacuum_after_run:
        report.vacuum = vacuum_tables(c.tables, cfg.output.retention_hours)
    write_report(cfg, p, c.run_id, report)
    return report


def _profile_rest(c: RunContext, rest: list[str]) -> tuple[dict, dict]:
    """Score profiles of every scored date (the early committer's, and of `rest` from their
    files' footers) and each date's drift checks."""
    cfg, p = c.cfg, c.p
    t0 = time.perf_counter()
    heads = cfg.output.value_columns
    col = cfg.input.partition_column
    adopted = {d: c.run.adopted_files(d, "part") for d in rest}
    own = profile_partitions(c.tables.location, col, rest, heads, c.run_id, c.run.attempt, adopted)
    profiles = {**c.committer.profiles, **own}
    checked = evaluate_heads(
        cfg.drift,
        c.committed,
        col,
        profiles,
        heads,
        p.model_meta.sha256,
        run_references(cfg.output, p.model_meta),
        only=rest,
    )
    drift = {d: c.committer.drift[d] if d in c.committer.drift else checked[d] for d in c.dates}
    c.timings["profile"] = time.perf_counter() - t0
    return profiles, drift


def _check_early_commits_unchanged(c: RunContext) -> None:
    """A date committed while the run went on must not have changed since: file names are
    deterministic within an attempt so that a retried task rewrites its own file, and a task re-run
    after the commit (lineage reconstruction after a node loss) would rewrite committed files.
    Such a date is withdrawn from the table (readers see it no more, the next run rescores it)
    and the run fails naming it: it never stays committed with other rows than were checked."""
    loc, col = c.tables.location, c.cfg.input.partition_column
    for x in c.committer.commits:
        for path, size in x.file_sizes.items():
            now = loc.fs.get_file_info(loc.join(path).path).size
            if now == size:
                continue
            why = f"{path} changed after the date was committed ({size} -> {now} bytes)"
            version = withdraw_date(c.tables, x.date, c.run, why)
            done = (
                f"withdrawn from the table at version {version}; the next run rescores it"
                if version is not None
                else "another run has committed the date since; its files are not this run's"
            )
            raise CommitError(f"{col}={x.date}: {why}; {done}")


def _commit_rest(c: RunContext, report: RunReport, rest: list[str], profiles: dict, drift: dict) -> list:
    from pipeline.errors import CommitConflictError

    try:
        return commit_partitions(
            c.tables,
            subset(c.p.inputs, rest),
            c.run,
            c.policy,
            extra={d: commit_profiles(profiles[d], drift[d]) for d in rest},
        )
    except CommitError as e:
        uri = fail_report(c, report, "failed", str(e))
        mine = c.committer.published
        published = f"; committed by this run before it: {', '.join(mine)}" if mine else ""
        raise CommitError(f"{e}\n  (not published: {', '.join(rest)}{published}; report: {uri})") from None
    except CommitConflictError as e:
        uri = fail_report(c, report, "conflict", str(e))
        raise CommitConflictError(f"{e}\n  (report: {uri})") from None
