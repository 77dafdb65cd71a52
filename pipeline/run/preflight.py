"""The preflight phase: everything checked before any model work, and nothing written but a probe
and, once there is something to score, the attempt's record: the model (sha256), the output
(writable), each date's state in the Delta log (skip or score, and why), the input files (footers,
schemas, columns), the run id (no other live process runs it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pipeline.commit.tables import digest_of
from pipeline.config import JobConfig, dump_config
from pipeline.errors import StageError, StorageError, UserError
from pipeline.reporting.runs import bad_run_id, new_run_id
from pipeline.run.attempt import Attempt
from pipeline.stages.predict import ModelSource
from pipeline.stages.read import survey
from pipeline.stages.validate import ColumnRequirements, check_schemas
from pipeline.storage import Location, is_s3, probe_writable, resolve, write_bytes

log = logging.getLogger("batchscore")


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
    embedding_dim: int | None = None  # kind 'embedding': d, from the forward pass of the model check
    duplicates: Any = None  # pipeline.stages.duplicates.DuplicateKeys, once checked (score only)

    @property
    def passthrough(self) -> list[str]:
        return list(dict.fromkeys([*self.cfg.output.key_columns, self.cfg.input.partition_column]))


def prepare(
    cfg: JobConfig, dates: list[str], model_meta: Any = None, listed: dict[str, Any] | None = None
) -> Prepared:
    """Check config, input partitions and schemas, and the model (metadata + sha256). The
    workers get the sha256 verified here and refuse weights that differ (e.g. replaced since)."""
    t0 = time.perf_counter()
    source = ModelSource.from_config(cfg)
    meta = model_meta if model_meta is not None else source.inspect()[0]
    source = source.pinned(meta)
    spec = meta.spec()
    if spec is None and not cfg.preprocessing.function:
        raise UserError(
            f"model {cfg.model.uri}: has no feature spec; set preprocessing.features in the config "
            "or preprocessing.function"
        )
    if cfg.preprocessing.function:
        spec = None
    t1 = time.perf_counter()
    # missing dates, unreadable files and the readable files' schema problems in one report
    inputs, problems = survey(
        resolve(cfg.input.uri, cfg.storage),
        dates,
        cfg.input.partition_column,
        cfg.input.on_bad_file,
        listed=listed,
    )
    req = ColumnRequirements.for_job(cfg.output.key_columns, spec, cfg.input.columns)
    check_schemas(inputs, req, cfg.input.on_bad_file, earlier=problems)
    for s in inputs.skipped:
        log.warning("skipped (input.on_bad_file=skip): %s: %s", s["uri"], s["reason"])
    t2 = time.perf_counter()
    prepared = Prepared(cfg, dates, inputs, req, source, meta, resolve(cfg.output.uri, cfg.storage))
    prepared.timings = {"model_check_s": t1 - t0, "input_check_s": t2 - t1}
    return prepared


@dataclass
class OutputProbe:
    """A forward pass of the model on a few rows of the first input file, before any scoring."""

    uri: str
    rows: int
    values: dict[str, Any]  # output column -> numpy array (embeddings: [rows, d])
    embedding_dim: int | None


def needs_output_probe(cfg: JobConfig) -> bool:
    """Whether a run checks the model's output on the driver before scoring: for several heads,
    an embedding (its width makes the table's schema) or top-K. A single score column is checked
    by the predict stage on the first batch, with the same message, and no data is committed
    before; the probe would cost every nightly run a torch import and a model load on the driver
    (about 2 s on 2 CPUs, measured as model_check_s)."""
    out = cfg.output
    return out.kind != "scores" or len(out.value_columns) > 1 or out.top_k is not None


def probe_model_output(p: Prepared, rows: int = 16) -> OutputProbe:
    """Load the model on the driver's CPU and run it on `rows` rows of the first input file, so a
    model whose output does not fit output.kind / output.score_columns is refused now, naming the
    shapes or names it returned, rather than after the data was read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.outputs import embedding_matrix
    from pipeline.stages.predict import OutputSpec, Predictor
    from pipeline.stages.preprocess import Preprocessor

    cfg, col = p.cfg, p.cfg.input.partition_column
    first = p.inputs.partitions[0].files[0]
    with p.inputs.root.fs.open_input_file(first.path) as f:
        sample = (
            pq.ParquetFile(f)
            .read_row_group(0, columns=[c for c in p.requirements.columns if c != col])
            .slice(0, rows)
        )
    sample = sample.append_column(col, pa.array([p.inputs.partitions[0].date] * sample.num_rows))
    spec = p.model_meta.spec() if not cfg.preprocessing.function else None
    pre = Preprocessor(
        spec,
        p.passthrough,
        cfg.preprocessing.function,
        required=p.requirements.columns,
        device_transforms=True,  # as in `score`: the predictor applies the numeric transforms
    )
    pre.dead_letter = _Discard()
    batch = pre(sample)
    if batch.num_rows == 0:  # every sampled row is a dead letter: nothing to try the model on
        log.warning("model check: no scorable row among the first %d of %s", sample.num_rows, first.uri)
        return OutputProbe(first.uri, 0, {}, None)
    output = OutputSpec.from_config(cfg)
    predictor = Predictor(
        p.source, p.passthrough, run_id="probe", device="cpu", output=output, dead_letter=_Discard()
    )
    try:
        table = predictor(batch)
    except StageError as e:
        raise UserError(f"model {cfg.model.uri}: on {batch.num_rows} rows of {first.uri}: {e}") from None
    except (TypeError, RuntimeError) as e:  # e.g. a TorchScript forward called with other inputs
        raise UserError(
            f"model {cfg.model.uri}: calling it on {batch.num_rows} rows of {first.uri} failed "
            f"(model.inputs {p.model_meta.inputs}): {type(e).__name__}: {e}"
        ) from None
    arrays = {
        c: embedding_matrix(table.column(c)) if output.kind == "embedding" else table.column(c).to_numpy()
        for c in output.columns
    }
    return OutputProbe(first.uri, batch.num_rows, arrays, predictor.output.embedding_dim)


class _Discard:
    """A dead-letter sink for the model check: rows that cannot be scored are just left out."""

    def write(self, rows, reasons, batch=None) -> int:
        return rows.num_rows


def check_output_writable(cfg: JobConfig, run_id: str, attempt: str = "") -> None:
    """Write and delete a probe object before any work, so a bad output fails in seconds. Named by
    attempt: two processes with one run id must not delete each other's probe."""
    from deltalake.exceptions import DeltaError

    from pipeline.commit.tables import delete_files, storage_options

    output = resolve(cfg.output.uri, cfg.storage, quick=True)
    name = f".batchscore-probe-{run_id}{'.' + attempt if attempt else ''}"  # at the root: no directories
    try:
        if is_s3(output.uri):  # not pyarrow's delete on S3: it would leave a marker for the root
            write_bytes(output.join(name), b"")
            delete_files(output, [name], storage_options(output.uri, cfg.storage))
        else:  # the local folders the probe created are removed again
            probe_writable(output, name)
    except (OSError, DeltaError) as e:
        raise StorageError(f"cannot write to the output {output.uri}: {e}") from None


def check_run_id(run_id: str) -> str:
    why = bad_run_id(run_id)
    if why:
        raise UserError(f"--run-id {why}")
    return run_id


@dataclass
class DatePlan:
    """Which dates to score, which are already committed as asked, and why each is (re)scored."""

    todo: list[str]
    done: list[str]
    why: dict[str, str]
    listed: dict[str, Any]
    generations: dict[str, int | None]  # each date's generation in the log at planning time


def scoring_identity(cfg: JobConfig, meta: Any) -> str:
    """What decides the scores besides the weights: the scoring config and the checkpoint's own
    metadata (feature spec with its statistics, architecture, inputs) and, from a registry, the
    version and its artifacts' checksum (moving an alias rescores). A checkpoint re-exported
    with new normalisation statistics but the same weights is a new identity. So is an edit of
    the file that defines a class_path model or a preprocessing.function (files it imports are
    not hashed: rescore with --force after changing those)."""
    from models.imports import source_digest

    parts = [cfg.scoring_digest(), meta.format, meta.feature_spec, meta.architecture, meta.inputs]
    named = [cfg.model.class_path, cfg.preprocessing.function, (meta.architecture or {}).get("class")]
    code = source_digest([p for p in named if p])
    if code:  # only with code of the user's: the other configs keep the identities they committed
        parts.append(code)
    if meta.registry is not None:  # the version an alias resolved to, and its artifacts
        parts.append({"registry": [meta.registry.name, meta.registry.version, meta.registry.checksum]})
    return digest_of(*parts)


def plan_dates(
    cfg: JobConfig, dates: list[str], meta: Any, force: bool = False, also: Collection[str] = ()
) -> DatePlan:
    """Dates committed with this model, scoring config and unchanged input files are done (read
    from the Delta log); the others are scored, each with the reason. `also`: dates scored even
    when done (a challenger needs them: the champion's are replaced by the same scores)."""
    from pipeline.commit.partitions import identity_of
    from pipeline.commit.tables import OutputTables
    from pipeline.stages.read import list_inputs

    col = cfg.input.partition_column
    listed = list_inputs(resolve(cfg.input.uri, cfg.storage), dates, col)
    tables = OutputTables.for_config(cfg)
    preds, dls = tables.predictions.open(), tables.dead_letters.open()
    todo, done, why, gens, other_model = [], [], {}, {}, []
    for d in dates:
        if d not in listed:  # nothing to score: survey() reports or skips it
            todo.append(d)
            continue
        identity = identity_of(listed[d], meta.sha256, scoring_identity(cfg, meta))
        state = tables.predictions.state(preds, col, d, identity, dls)
        gens[d] = state.generation
        if state.committed_as_asked and not force and d not in also:
            done.append(d)
        else:
            todo.append(d)
            why[d] = "--force" if force else state.why_rescored()
            if state.committed_as_asked and not force:
                why[d] = "a challenger has not committed it yet"
            if not force and state.generation is not None and not state.withdrawn and not state.same_model:
                other_model.append(d)
    why.update(registry_moves(preds, other_model, meta))
    return DatePlan(todo, done, why, listed, gens)


def registry_moves(preds: Any, dates: list[str], meta: Any, history: int = 1000) -> dict[str, str]:
    """Why dates committed with another model are rescored, when the model comes from a registry
    and the date's last commit (within the last `history` commits) names another version or other
    artifacts: 'model changed: models:/ranker@champion now version 3 (was 2)'."""
    pin = meta.registry
    if pin is None or preds is None or not dates:
        return {}
    from pipeline.commit.tables import commits_of_history

    last: dict[str, dict[str, Any]] = {}
    for c in commits_of_history(preds, history):  # newest first
        if c.get("date") in dates and c["date"] not in last:
            last[c["date"]] = c
    out = {}
    for d, c in last.items():
        was = c.get("model_registry") or {}
        if not was.get("version"):
            continue  # committed from a path, or before registry models: the general reason stands
        if was.get("name") != pin.name:
            out[d] = (
                f"model changed: {pin.uri} now {pin.name} version {pin.version} "
                f"(was {was.get('name')} version {was['version']})"
            )
        elif was["version"] != pin.version:
            out[d] = f"model changed: {pin.uri} now version {pin.version} (was {was['version']})"
        elif was.get("checksum") != pin.checksum:
            out[d] = f"model changed: the artifacts of {pin.pinned_uri} differ from those committed"
    return out


@dataclass
class Preflight:
    """What the preflight found: the model, the dates to score (and why), the checked inputs
    (None when every date is already committed as asked)."""

    run_id: str
    model_meta: Any
    dates: DatePlan
    prepared: Prepared | None
    attempt: Attempt


def preflight(
    cfg: JobConfig, dates: list[str], run_id: str | None, force: bool, also: Collection[str] = ()
) -> Preflight:
    """Model, output, dates, inputs and run id checked; nothing written but the output probe and
    the attempt's record. A run id given again (a scheduler's retry) is taken up by this process
    unless another live process runs it; the caller ends the attempt (`Attempt.held`)."""
    if run_id:
        check_run_id(run_id)
    run_id = run_id or new_run_id(cfg.name)
    log.debug("run %s: resolved config:\n%s", run_id, dump_config(cfg))
    meta = ModelSource.from_config(cfg).inspect()[0]
    attempt = Attempt(resolve(cfg.output.uri, cfg.storage), run_id, cfg.name, dates)
    # an unreachable or unwritable output fails here, in seconds
    check_output_writable(cfg, run_id, attempt.id)
    pre = _plan(cfg, dates, run_id, meta, force, attempt, also)
    if pre.prepared is not None:  # after the checks (a bad input writes nothing), before any data
        attempt.claim()  # another live process with this run id: refused here
    return pre


def _plan(
    cfg: JobConfig,
    dates: list[str],
    run_id: str,
    meta: Any,
    force: bool,
    attempt: Attempt,
    also: Collection[str] = (),
) -> Preflight:
    """Each date's state in the log, then the inputs of the dates to score and the model's output."""
    dp = plan_dates(cfg, dates, meta, force, also)
    if dp.done:
        log.info(
            "already committed with this model, config and inputs, skipped: %s (--force rescores)", dp.done
        )
    for d, why in dp.why.items():
        log.info("scoring %s=%s: %s", cfg.input.partition_column, d, why)
    prepared = prepare(cfg, dp.todo, model_meta=meta, listed=dp.listed) if dp.todo else None
    if prepared is not None and prepared.inputs.partitions and needs_output_probe(cfg):
        t0 = time.perf_counter()
        prepared.embedding_dim = probe_model_output(prepared).embedding_dim
        took = time.perf_counter() - t0
        prepared.timings["model_check_s"] = prepared.timings.get("model_check_s", 0.0) + took
    return Preflight(run_id, meta, dp, prepared, attempt)
