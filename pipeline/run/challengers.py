"""Challengers scored beside the champion in the same pass (config `challengers`).

The champion's run is the ordinary run (pipeline/run/score.py); this module hooks into it:

    plan     each challenger's model checked and its dates planned against its own table (the
             scoring identity of the job it would be alone: `challenger_job`), before the champion's
             preflight, which also rescores a date only a challenger needs (an exact replacement)
    score    the local runner's scorer preprocesses each slice once per distinct preprocessing and
             passes it through the champion and every challenger; a challenger's predictions and the
             shared preprocessing's dead letters go to its own table's files. The actors mode's
             replicas do the same, except for a challenger the pool plan placed in replicas of its
             own (pipeline/run/resources.py plan_placement): its preprocessed slices go there
             (pipeline/run/ownpool.py)
    commit   after the champion's dates are committed: each challenger's, reconciled by key, drift-
             profiled, one Delta transaction per date (pipeline/commit/partitions.py, as the champion)
    compare  per date, challenger against champion on the two tables joined by key (compare.py)

A challenger that fails (its model does not load or raises, its rows do not reconcile, its commit
conflicts) stops being scored, its uncommitted files are removed, and the run goes on: the champion's
commits are never held back by it. The report says so and `batchscore score` exits 8."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import posixpath
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.commit.groups import TopKCheck
from pipeline.commit.partitions import CommitPolicy, RunIdentity, brief_error, commit_partitions
from pipeline.commit.streaming import subset
from pipeline.commit.tables import OutputTables, digest_of, list_run_files
from pipeline.config import ChallengerConfig, JobConfig, challenger_job
from pipeline.errors import ChallengerError, ConfigError
from pipeline.reporting.schema import ChallengerResult, ModelInfo, RunReport
from pipeline.run.preflight import DatePlan, plan_dates, scoring_identity
from pipeline.stages.deadletter import DeadLetterWriter
from pipeline.stages.predict import ModelSource, Predictor
from pipeline.unitwork import noting

log = logging.getLogger("batchscore")


@dataclass(eq=False)
class Challenger:
    """One challenger's state through the run."""

    cfg: ChallengerConfig
    job: JobConfig
    tables: OutputTables
    meta: Any = None
    plan: DatePlan | None = None
    error: str | None = None
    dates: list[str] = field(default_factory=list)  # what this run scores of it
    files: Any = None  # its pipeline.run.local.DateFiles
    preprocess_key: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)  # its Predictor's arguments
    pre: Any = None  # its Preprocessor (used when its preprocessing differs from the champion's)
    pairs: Any = None  # pipeline.run.comparison.PairSample: (champion, challenger) as scored
    dead_letter: DeadLetterWriter | None = None
    committed: list[str] = field(default_factory=list)
    commits: list[Any] = field(default_factory=list)
    shares_features: bool | None = None  # takes the champion's transformed features (once known)
    pairs_at: Any = None  # top-K: where its per-row score pairs go (pipeline.stages.modelset.PairSpec)
    _first: Predictor | None = None
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def active(self) -> bool:
        return self.error is None and bool(self.dates)

    def fail(self, why: str) -> None:
        with self._lock:
            if self.error is None:
                self.error = why
                log.error("challenger %s failed, the champion goes on: %s", self.name, why)

    def predictor(self) -> Predictor:
        """This thread's predictor: the model loaded once, shared by the threads (read-only)."""
        mine = getattr(self._local, "predictor", None)
        if mine is None:
            with self._lock:
                if self._first is None:
                    self._first = Predictor(**self.kwargs)
                    mine = self._first
                else:
                    mine = self._first.share()
            self._local.predictor = mine
        return mine


class ChallengerSet:
    """Every challenger of the run; the hooks score.py and local.py call."""

    def __init__(self, challengers: list[Challenger]) -> None:
        self.all = challengers
        self.pools: list[Any] = []  # pipeline.run.ownpool.OwnPool of the challengers placed apart

    @classmethod
    def plan(cls, cfg: JobConfig, dates: list[str], force: bool) -> ChallengerSet:
        """Each challenger's model inspected (sha256 checked) and its dates planned in its table.
        A challenger whose model cannot be read fails here; the champion still runs."""
        out = []
        for ch in cfg.challengers:
            job = challenger_job(cfg, ch)
            c = Challenger(ch, job, OutputTables.for_config(job))
            try:
                c.meta = ModelSource.from_config(job).inspect()[0]
                c.plan = plan_dates(job, dates, c.meta, force)
            except Exception as e:  # a missing or bad model, an unreadable table: this challenger only
                c.fail(f"{type(e).__name__}: {brief_error(e)}")
            out.append(c)
        return cls(out)

    def needed(self) -> set[str]:
        """Dates some challenger still has to score."""
        return {d for c in self.all if c.error is None and c.plan for d in c.plan.todo}

    def start(self, ctx: Any) -> None:
        """Once the champion's run is set up: each challenger's predictor, dead letters, files."""
        from pipeline.run.local import DateFiles

        check_runner(ctx.pool.runner, ctx.pool.mode, top_k=ctx.cfg.output.top_k is not None)
        for c in self.all:
            if c.error is not None or c.plan is None:
                continue
            c.dates = [d for d in ctx.dates if d in set(c.plan.todo)]
            if not c.dates:
                continue
            try:
                self._setup(c, ctx)
            except Exception as e:
                c.fail(f"{type(e).__name__}: {brief_error(e)}")
                continue
            if ctx.cfg.output.top_k is not None and c.preprocess_key != preprocess_key(
                ctx.cfg, ctx.p.model_meta
            ):
                c.fail(
                    "with output.top_k a challenger shares the champion's preprocessing, and its "
                    "model's feature spec differs from the champion's (retrain on the same features, "
                    "or score it alone)"
                )
                continue
            parts = ctx.p.inputs.partitions
            per_date = {part.date: len(part.files) for part in parts if part.date in c.dates}
            c.files = DateFiles(c.tables.location, c.job.output, ctx.run_id, per_date, ctx.run.attempt)
            if ctx.pool.runner == "local" and c.preprocess_key == preprocess_key(ctx.cfg, ctx.p.model_meta):
                from pipeline.run.comparison import PairSample, compared_columns

                cols = compared_columns(ctx.cfg, c.job, c.cfg.compare_column)
                rows = {part.date: part.rows for part in parts if part.date in c.dates}
                c.pairs = PairSample(ctx.cfg, *cols, rows, per_date)
            if ctx.pool.runner == "local":  # its model loads while the champion's first slices score
                threading.Thread(target=_preload, args=(c,), name="batchscore-preload", daemon=True).start()

    def _setup(self, c: Challenger, ctx: Any) -> None:
        from pipeline.run.execute import stage_objects
        from pipeline.stages.validate import ColumnRequirements

        job, meta = c.job, c.meta
        spec = meta.spec() if not job.preprocessing.function else None
        req = ColumnRequirements.for_job(job.output.key_columns, spec, job.input.columns)
        missing = [x for x in req.columns if x not in ctx.p.requirements.columns]
        if missing:
            raise ConfigError(
                f"challenger {c.name} reads columns {missing} the champion does not: "
                "add them to input.columns"
            )
        source = ModelSource.from_config(job).pinned(meta)  # its sha256 and registry version held
        p = dataclasses.replace(ctx.p, cfg=job, source=source, model_meta=meta, requirements=req)
        c.dead_letter = DeadLetterWriter(
            c.tables.dead_letters.location,
            job.input.partition_column,
            job.output.key_columns,
            ctx.run_id,
            ctx.run.attempt,
        )
        pre, c.kwargs = stage_objects(p, ctx.pool, ctx.run_id, dead_letter=c.dead_letter)
        c.preprocess_key = preprocess_key(job, meta)
        c.pre = pre

    def hook_local(
        self, ctx: Any, scorer: Any, files: Any, dead_letter: Any, unit_dates: dict[int, str]
    ) -> tuple[Any, Any]:
        """The local runner's scorer and unit files, scoring and writing every active challenger
        on the same slices (the champion's alone when none is active). `unit_dates`: the date of
        each of the champion's units."""
        active = [c for c in self.all if c.active]
        if not active:
            return scorer, files
        key = preprocess_key(ctx.cfg, ctx.p.model_meta)
        shared = [c.dead_letter for c in active if c.preprocess_key == key]
        if shared:  # the champion's preprocessing rejects rows for every model that shares it
            scorer.preprocessor.dead_letter = TeeDeadLetters([dead_letter, *shared])
        return ChallengerScorer(scorer, active, key), TeeFiles(files, active, unit_dates)

    def hook_replicas(self, ctx: Any, scorer: Any, dead_letter: Any) -> Any:
        """The actors mode's scorer: each replica holds every active model shared with it and
        writes each such challenger's files of a unit beside the champion's; a challenger the pool
        plan placed apart (ctx.pool.placement.own) gets a pool of its own (pipeline/run/ownpool.py),
        fed the preprocessed slices by the champion's replicas (pipeline/run/replicas.py)."""
        from pipeline.commit.tables import run_file_prefix
        from pipeline.stages.layout import OutputFiles

        active = [c for c in self.all if c.active]
        if not active:
            return scorer
        key = preprocess_key(ctx.cfg, ctx.p.model_meta)
        shared = [c.dead_letter for c in active if c.preprocess_key == key]
        if shared:
            scorer.preprocessor.dead_letter = TeeDeadLetters([dead_letter, *shared])
        prefix = run_file_prefix(ctx.run_id, attempt=ctx.run.attempt)
        models = [
            ReplicaModel(
                c.name,
                c.kwargs,
                c.pre,
                c.preprocess_key,
                set(c.dates),
                OutputFiles.for_output(c.tables.location, c.job.output),
                failure_marker(c, ctx),
            )
            for c in active
        ]
        self._own_pools(ctx, models, prefix)
        return ReplicaScorer(scorer, models, key, prefix, ctx.cfg.input.partition_column)

    def _own_pools(self, ctx: Any, models: list[ReplicaModel], prefix: str) -> None:
        """A pool of replicas for each challenger placed apart; its model loads from now on."""
        from pipeline.run.ownpool import OwnPool

        placement = ctx.pool.placement
        own = set(placement.own) if placement is not None else set()
        for m in models:
            if m.name in own:
                replicas = placement.replicas.get(m.name, 1)
                batch = ctx.cfg.predict.batch_size
                pool = OwnPool(m, prefix, ctx.pool, replicas, batch, ctx.cfg.predict.label_selector)
                self.pools.append(pool)
                m.pool = pool.actors
                log.info("challenger %s: %d replica(s) of its own", m.name, len(pool.actors))

    def close_pools(self) -> None:
        """The challengers' own pools killed (their GPUs freed): every unit's files are closed."""
        for pool in self.pools:
            pool.close()
        self.pools = []

    def sizes(self, dates: list[str]) -> dict[str, int]:
        """Weight bytes of each challenger this run scores (for the pool plan's placement)."""
        want = set(dates)
        return {
            c.name: int(c.meta.weight_bytes or 0)
            for c in self.all
            if c.error is None and c.plan is not None and want & set(c.plan.todo)
        }

    def hook_ray(self, ctx: Any, dead_letter: Any) -> RayModelSet | None:
        """Ray's fused or staged pool with top-K (output.top_k): every active challenger beside the
        champion in each task or replica and through the shuffle (pipeline/stages/modelset.py);
        None without any."""
        from pipeline.commit.tables import run_file_prefix
        from pipeline.stages.layout import OutputFiles
        from pipeline.stages.modelset import SideModel
        from pipeline.stages.topk import TopKSpec

        active = [c for c in self.all if c.active]
        if not active or ctx.cfg.output.top_k is None:  # without top-K: check_runner refused these modes
            return None
        sides = [
            SideModel(
                c.name,
                c.kwargs,
                set(c.dates),
                TopKSpec.from_config(c.job),
                c.dead_letter.tagged("topk"),
                OutputFiles.for_output(c.tables.location, c.job.output),
                run_file_prefix(ctx.run_id, attempt=ctx.run.attempt),
                failure_marker(c, ctx),
                self._pairs(c, ctx),
            )
            for c in active
        ]
        return RayModelSet(ctx.cfg, sides, [c.dead_letter for c in active], dead_letter)

    def _pairs(self, c: Challenger, ctx: Any) -> Any:
        """Top-K: where and which of its rows' scores (and the champion's) are kept before the
        ranking, for the comparison (pipeline/quality/topk_compare.py)."""
        from pipeline.reporting.runs import RUNS_DIR
        from pipeline.run.comparison import compared_columns
        from pipeline.stages.modelset import PairSpec

        cap = ctx.cfg.compare.max_rows
        rows = {part.date: part.rows for part in ctx.p.inputs.partitions if part.date in c.dates}
        cuts = {d: min(int(min(1.0, cap / max(n, 1)) * 2**64), 2**64 - 1) for d, n in rows.items()}
        where = c.tables.location.join(RUNS_DIR, ctx.run_id, f"pairs.{ctx.run.attempt}")
        champ, chall = compared_columns(ctx.cfg, c.job, c.cfg.compare_column)
        c.pairs_at = PairSpec(where, list(ctx.cfg.output.key_columns), champ, chall, cuts)
        return c.pairs_at

    def discard(self, ctx: Any) -> None:
        """The files of challengers this attempt did not commit (a failed run or challenger)."""
        for c in self.all:
            left = [d for d in c.dates if d not in c.committed]
            if left:
                discard_uncommitted(c.tables, left, ctx.run_id, ctx.run.attempt)

    def abandon(self, ctx: Any) -> None:
        """A failed run: what this attempt did not commit, and the top-K score pairs."""
        self.discard(ctx)
        for c in self.all:
            if c.pairs_at is not None:
                _remove(c.pairs_at.where)

    def discard_dead(self, attempt: Any) -> None:
        """Earlier attempts of this run id that died before committing: their files in each
        challenger's table (pipeline/run/attempt.py proves them dead)."""
        for c in self.all:
            for dead in attempt.dead:
                discard_uncommitted(c.tables, dead.dates, dead.run_id, dead.attempt)

    def finish(self, ctx: Any, report: RunReport) -> None:
        """After the champion's commits: each challenger's dates committed, then compared."""
        from pipeline.run.comparison import compare_dates

        took = {}
        for c in self.all:
            t0 = time.perf_counter()
            if c.active:
                _read_failure(c, ctx)  # a replica's process found it failing (actors mode)
            if c.active:
                self._commit(c, ctx)
            took[c.name] = round(time.perf_counter() - t0, 3)
        self.discard(ctx)
        report.challengers = [self._result(c, ctx) for c in self.all]
        for c, r in zip(self.all, report.challengers, strict=True):
            r.commit_s = took[c.name]
            if c.plan is not None and c.error is None:
                compare_dates(ctx.cfg, c, r, ctx.dates)
            if c.pairs is not None:
                c.pairs.close()
            if c.pairs_at is not None:  # the sampled score pairs: used up (or of a failed challenger)
                _remove(c.pairs_at.where)

    def _commit(self, c: Challenger, ctx: Any) -> None:
        from pipeline.quality.drift import commit_profiles, committed_profiles, evaluate_heads, run_references
        from pipeline.quality.profiles import profile_partitions

        job, col = c.job, ctx.cfg.input.partition_column
        heads = job.output.value_columns
        run = RunIdentity(
            ctx.run_id,
            job.name,
            c.meta.version,
            c.meta.sha256,
            job.digest(),
            scoring_identity(job, c.meta),
            seen=c.plan.generations,
            attempt=ctx.run.attempt,
            check_lease=ctx.run.check_lease,
            model_registry=c.meta.registry.record()
            if getattr(c.meta, "registry", None) is not None
            else None,
        )
        policy = CommitPolicy(
            job.output.key_columns,
            job.output.verify,
            job.output.max_bad_row_fraction,
            ctx.policy.read_keys,  # with top-K: the input's group keys, the same groups as the champion's
            top_k=TopKCheck.from_config(job) if job.output.top_k is not None else None,
        )
        try:
            profiles = profile_partitions(c.tables.location, col, c.dates, heads, ctx.run_id, ctx.run.attempt)
            committed = committed_profiles(c.tables.predictions.open(), first_head=heads[0])
            refs = run_references(job.output, c.meta)
            sha = c.meta.sha256
            drift = evaluate_heads(job.drift, committed, col, profiles, heads, sha, refs, only=c.dates)
            extra = {d: commit_profiles(profiles[d], drift[d]) for d in c.dates}
            c.commits = commit_partitions(c.tables, subset(ctx.p.inputs, c.dates), run, policy, extra=extra)
            c.committed = [x.date for x in c.commits]
            for x in c.commits:
                log.info("challenger %s: committed %s=%s (%d rows)", c.name, col, x.date, x.output_rows)
        except Exception as e:  # its checks, its storage, a conflict: the champion's commits stand
            c.fail(f"{type(e).__name__}: {brief_error(e, 2000)}")

    def _result(self, c: Challenger, ctx: Any) -> ChallengerResult:
        meta = c.meta
        status = "failed" if c.error else ("committed" if c.committed else "skipped")
        return ChallengerResult(
            name=c.name,
            table=c.tables.location.uri,
            model=ModelInfo(
                uri=c.job.model.uri,
                format=getattr(meta, "format", None),
                version=getattr(meta, "version", None),
                sha256=getattr(meta, "sha256", None),
            ),
            status=status,
            error=c.error,
            dates_committed=c.committed,
            rows=sum(x.output_rows for x in c.commits) if c.commits else None,
            dead_letter_rows=sum(x.dead_letter_rows for x in c.commits) if c.commits else None,
        )


class RayModelSet:
    """What a top-K run's Ray Data pipeline needs for the challengers (pipeline/run/execute.py's
    build_dataset and pipeline/run/score.py's top-K step)."""

    def __init__(self, cfg: JobConfig, sides: list[Any], dead_letters: list[Any], champion_dl: Any) -> None:
        self.cfg, self.sides = cfg, sides
        self.dead_letters, self.champion_dl = dead_letters, champion_dl

    def __call__(self, pre: Any, predictor_kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
        """(preprocessor, actor class, its arguments): the shared preprocessing's dead letters go
        to every table; each replica holds every model."""
        from pipeline.stages.modelset import ModelSetPredictor

        pre.dead_letter = TeeDeadLetters([self.champion_dl, *self.dead_letters])
        kwargs = {
            "champion": predictor_kwargs,
            "sides": self.sides,
            "partition_column": self.cfg.input.partition_column,
        }
        return pre, ModelSetPredictor, kwargs

    def fused(self, scorer: Any) -> Any:
        """The fused mode's scorer (built with this set's arguments) holding every model."""
        from pipeline.stages.modelset import FusedModelSet

        return FusedModelSet(scorer)

    def top_k_dataset(self, ds: Any, partitions: int) -> Any:
        from pipeline.stages.modelset import model_set_top_k_dataset
        from pipeline.stages.topk import TopKSpec

        return model_set_top_k_dataset(
            ds, TopKSpec.from_config(self.cfg), self.sides, partitions, self.champion_dl
        )


class ChallengerScorer:
    """The local runner's scorer with challengers: each slice preprocessed once per distinct
    preprocessing, then through the champion (returned, as FusedScorer.score does) and every
    active challenger (written to its own date files). A challenger with the champion's feature
    spec takes the champion's transformed features of each batch (copies: a model that changed its
    inputs in place would change no other model's) instead of transforming it again. A challenger
    that raises is marked failed and left out from then on; the champion's rows are never held
    back by it."""

    def __init__(self, champion: Any, challengers: list[Challenger], champion_key: str) -> None:
        self.champion = champion
        self.challengers = challengers
        self.champion_key = champion_key
        self.predictor_kwargs = champion.predictor_kwargs
        self.batch_size = champion.batch_size
        self.preprocess_batch_size = champion.preprocess_batch_size
        self.partition_column = challengers[0].job.input.partition_column

    def score(self, batch: pa.Table, predictor: Predictor, at: tuple[int, int] | None = None) -> pa.Table:
        """`at`: where `batch` starts in the input (the file's index in the plan, its row offset),
        the order the compared pairs are kept in (pipeline/run/comparison.py)."""
        if at is None:
            raise TypeError("ChallengerScorer.score needs the batch's place in the input (at=)")
        outs = []
        for i in range(0, max(batch.num_rows, 1), self.preprocess_batch_size):
            piece = batch.slice(i, self.preprocess_batch_size)
            features = {self.champion_key: self.champion.preprocessor(piece)}
            feats = features[self.champion_key]
            date = piece.column(self.partition_column)[0].as_py() if piece.num_rows else None
            active = [c for c in self.challengers if c.error is None and date in c.files.left]
            beside = [c for c in active if c.preprocess_key == self.champion_key]
            for n, j in enumerate(range(0, max(feats.num_rows, 1), self.batch_size)):
                where = (at[0], at[1] + i, n)
                outs.append(self._beside(feats.slice(j, self.batch_size), predictor, beside, date, where))
            with noting():  # their files are not the champion unit's (resume adopts those)
                for c in active:
                    if c.preprocess_key != self.champion_key:
                        self._apart(c, piece, features, date)
        return outs[0] if len(outs) == 1 else pa.concat_tables(outs)

    def _beside(
        self, part: pa.Table, predictor: Predictor, challengers: list[Challenger], date: Any, where: tuple
    ) -> pa.Table:
        """One batch of the champion's preprocessed rows through the champion and `challengers`
        (the same preprocessing); the champion's predictions returned."""
        import torch

        copies: dict[str, Any] = {}
        sharing = [c for c in challengers if part.num_rows and self._shares(c, predictor, part)]
        feats = None
        if sharing:
            with torch.inference_mode():
                feats = predictor.encoded_features(part)
                copies = {c.name: {k: v.clone() for k, v in feats.items()} for c in sharing}
        mine = predictor(part, feats)
        if not part.num_rows:
            return mine
        with noting():  # their files are not the champion unit's (resume adopts those)
            for c in challengers:
                if c.error is not None:
                    continue
                try:
                    out = c.predictor()(part, copies.get(c.name))
                    c.files.add(date, out)
                    if c.pairs is not None and out.num_rows:  # the same rows as the champion's
                        c.pairs.add(date, where, mine, out)
                except Exception as e:  # its model raised: it alone stops
                    self._failed(c, date, e)
        return mine

    def _shares(self, c: Challenger, predictor: Predictor, part: pa.Table) -> bool:
        """Whether `c` takes the champion's transformed features (decided once per challenger)."""
        if c.shares_features is None:
            from pipeline.stages.predict import ENCODED_PREFIXES

            encoded = any(x.startswith(ENCODED_PREFIXES) for x in part.column_names)
            try:
                c.shares_features = encoded and predictor.shares_features(c.predictor())
            except Exception as e:  # its model does not load: it alone fails
                self._failed(c, None, e)
                return False
        return c.shares_features

    def _apart(self, c: Challenger, piece: pa.Table, features: dict[str, pa.Table], date: Any) -> None:
        """A challenger with a preprocessing of its own: the slice preprocessed its way, scored."""
        try:
            if c.preprocess_key not in features:
                features[c.preprocess_key] = c.pre(piece)
            feats, pred = features[c.preprocess_key], c.predictor()
            for j in range(0, max(feats.num_rows, 1), self.batch_size):
                c.files.add(date, pred(feats.slice(j, self.batch_size)))
        except Exception as e:  # its model raised: it alone stops
            self._failed(c, date, e)

    def _failed(self, c: Challenger, date: Any, e: Exception) -> None:
        where = f"scoring {self.partition_column}={date}" if date is not None else "loading its model"
        c.fail(f"{where}: {type(e).__name__}: {brief_error(e, 1000)}")


class TeeFiles:
    """The champion's unit files (pipeline/run/local.py), telling the challengers' date files when
    an input file is done too (each writes a date's last rows then). The champion's rows go to
    the champion's files only; what a unit wrote is noted for the champion's table alone."""

    def __init__(self, files: Any, challengers: list[Challenger], unit_dates: dict[int, str]) -> None:
        self.files, self.challengers, self.unit_dates = files, challengers, unit_dates
        self.clock = files.clock
        self.notes = files.notes

    def add(self, unit: int, rows: pa.Table) -> None:
        self.files.add(unit, rows)

    def file_done(self, unit: int) -> None:
        date = self.unit_dates[unit]
        for c in self.challengers:  # first: a date's comparison starts before its last writes
            if c.pairs is not None and c.error is None and date in c.files.left:
                c.pairs.file_scored(date)
        self.files.file_done(unit)
        for c in self.challengers:
            if date in c.files.left:
                c.files.file_done(date)


def _preload(c: Challenger) -> None:
    try:
        c.predictor()
    except Exception as e:  # its model does not load: it alone fails
        c.fail(f"loading its model: {type(e).__name__}: {brief_error(e, 1000)}")


@dataclass
class ReplicaModel:
    """A challenger as a replica process needs it (picklable): what to load, how to preprocess,
    which dates, where its files go, where to say it failed."""

    name: str
    kwargs: dict[str, Any]
    pre: Any
    key: str
    dates: set[str]
    files: Any  # pipeline.stages.layout.OutputFiles of its table
    failed_at: Any  # pipeline.storage.Location of its failure marker
    pool: list[Any] | None = None  # the actors of its own pool (pipeline/run/ownpool.py); None: here


class ReplicaScorer:
    """FusedScorer's interface for a scoring replica, with the challengers: a unit's slices are
    preprocessed once per distinct preprocessing and scored by every model; each challenger's rows
    go to its own unit files (the champion's names, in its table). A challenger that raises is left
    out in this process from then on, and its failure marker tells the driver, which commits
    nothing of it."""

    def __init__(self, champion: Any, models: list[ReplicaModel], key: str, prefix: str, col: str) -> None:
        self.champion, self.models, self.key = champion, models, key
        self.prefix, self.partition_column = prefix, col
        self.predictor_kwargs = champion.predictor_kwargs
        self.batch_size = champion.batch_size
        self.preprocess_batch_size = champion.preprocess_batch_size
        self._state: dict[str, Any] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_state": None}

    def _models(self) -> dict[str, Any]:
        if self._state is None:
            self._state = {"predictors": {}, "files": {}, "failed": set()}
        return self._state

    def unit_start(self, unit: int) -> None:
        from pipeline.run.ownpool import OwnSender
        from pipeline.run.replicas import UnitFiles

        st = self._models()
        st["files"] = {
            m.name: OwnSender(m.pool, unit) if m.pool else UnitFiles(m.files, f"{self.prefix}{unit:06d}")
            for m in self.models
        }

    def unit_done(self) -> float:
        """Each challenger's files of the unit closed (a pool of its own: once it scored them all)."""
        st, took = self._models(), 0.0
        for m in self.models:
            if m.name not in st["failed"]:
                took += self._guard(m, st["files"][m.name].close) or 0.0
        return took

    def score(self, batch: pa.Table, predictor: Predictor) -> pa.Table:
        outs = []
        for i in range(0, max(batch.num_rows, 1), self.preprocess_batch_size):
            piece = batch.slice(i, self.preprocess_batch_size)
            features = {self.key: self.champion.preprocessor(piece)}
            feats = features[self.key]
            for j in range(0, max(feats.num_rows, 1), self.batch_size):
                outs.append(predictor(feats.slice(j, self.batch_size)))
            if piece.num_rows:
                date = piece.column(self.partition_column)[0].as_py()
                for m in self.models:
                    if date in m.dates and m.name not in self._models()["failed"]:
                        with noting():  # its files are not the champion unit's (resume adopts those)
                            self._guard(m, self._score, m, piece, features)
        return outs[0] if len(outs) == 1 else pa.concat_tables(outs)

    def _score(self, m: ReplicaModel, piece: pa.Table, features: dict[str, pa.Table]) -> None:
        st = self._models()
        if m.key not in features:
            features[m.key] = m.pre(piece)
        if m.pool:  # its own replicas score and write it: the preprocessed slice goes to them
            if features[m.key].num_rows:
                st["files"][m.name].send(features[m.key])
            return
        if m.name not in st["predictors"]:
            st["predictors"][m.name] = Predictor(**m.kwargs)
        feats, pred = features[m.key], st["predictors"][m.name]
        for j in range(0, max(feats.num_rows, 1), self.batch_size):
            st["files"][m.name].add(pred(feats.slice(j, self.batch_size)))

    def _guard(self, m: ReplicaModel, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # its model raised: it alone stops; the driver reads why
            from pipeline.run.ownpool import cause_of
            from pipeline.storage import write_bytes

            self._models()["failed"].add(m.name)
            e = cause_of(e)  # raised in its own pool's replica: the error, not Ray's wrapping
            why = f"{type(e).__name__}: {brief_error(e, 1000)} (replica pid {os.getpid()})"
            with contextlib.suppress(Exception):
                write_bytes(m.failed_at, why.encode())
            return None


def _remove(where: Any) -> None:
    from pipeline.storage import delete_dir

    try:
        delete_dir(where)
    except OSError as e:  # best effort: a few small files under _runs/
        log.debug("could not remove %s: %s", where.uri, e)


def failure_marker(c: Challenger, ctx: Any) -> Any:
    """Where a replica says this challenger failed: this attempt's, under its table's runs."""
    from pipeline.reporting.runs import RUNS_DIR

    return c.tables.location.join(RUNS_DIR, ctx.run_id, f"challenger-failed.{ctx.run.attempt}")


def _read_failure(c: Challenger, ctx: Any) -> None:
    from pipeline.storage import read_bytes

    marker = failure_marker(c, ctx)
    try:
        why = read_bytes(marker).decode()
    except (OSError, FileNotFoundError):
        return
    c.fail(why)


def preprocess_key(job: JobConfig, meta: Any) -> str:
    """What decides a preprocessed batch: models with equal keys share one preprocessing."""
    pre = job.preprocessing.model_dump(mode="json", include={"features", "function"})
    return digest_of(pre, meta.feature_spec if not job.preprocessing.function else None)


class TeeDeadLetters:
    """A dead-letter writer writing each rejected row to several tables (the models sharing a
    preprocessing each reconcile their own table: input keys = their predictions + dead letters)."""

    def __init__(self, writers: list[Any]) -> None:
        self.writers = writers

    def write(self, rows: pa.Table, reasons: Any, batch: pa.Table | None = None) -> int:
        n = 0
        for w in self.writers:
            n = w.write(rows, reasons, batch)
        return n

    def tagged(self, tag: str) -> TeeDeadLetters:
        return TeeDeadLetters([w.tagged(tag) for w in self.writers])


def discard_uncommitted(tables: OutputTables, dates: list[str], run_id: str, attempt: str) -> None:
    """Delete this attempt's files of `dates` that its log does not hold (no reader has them)."""
    col = tables.partition_column
    try:
        logs = [(t, t.open()) for t in (tables.predictions, tables.dead_letters)]
    except Exception as e:  # storage down: vacuum removes them later
        log.debug("could not read the logs of %s: %s", tables.location.uri, e)
        return
    for d in dates:
        for (table, snapshot), kind in zip(logs, ("part", "dl"), strict=True):
            if table.ever_committed_by(snapshot, col, d, run_id, attempt):
                continue
            try:
                infos = list_run_files(table.location, col, d, run_id, kind, attempt)
                table.delete_files([posixpath.relpath(i.path, table.location.path) for i in infos])
            except Exception as e:  # best effort: vacuum removes them
                log.debug("could not remove uncommitted files of %s: %s", d, e)


def check_runner(runner: str, mode: str, top_k: bool = False) -> None:
    """Challengers are scored where one process holds every model and sees every slice: the local
    runner's threads, the actors mode's replicas, or with top-K Ray's fused tasks or staged
    replicas (the shuffle by group then runs per model). Ray's fused and staged modes without
    top-K are refused."""
    if runner == "ray" and top_k:
        return
    if runner == "ray" and mode != "actors":
        raise ConfigError(
            f"challengers: Ray's {mode!r} mode does not score them; set predict.mode: actors (every "
            "replica holds every model) or ray.runner: local"
        )


def raise_for_challengers(report: RunReport) -> None:
    """Exit 8 when a challenger failed (the champion's commits stand)."""
    failed = [c for c in report.challengers if c.status == "failed"]
    if failed:
        lines = [f"{c.name}: {c.error}" for c in failed]
        raise ChallengerError(
            f"{len(failed)} challenger(s) failed; the champion's dates are committed "
            f"(report: {report.report_uri}):\n  " + "\n  ".join(lines)
        )
