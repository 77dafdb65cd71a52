"""The run report as one typed model: what a run writes to OUTPUT/_runs/<run id>/report.json and what
the HTML page, the terminal summaries and the Prometheus textfile render.

The reference tables in docs/reports.md are generated from these models (`batchscore
report-reference`) and a test keeps them equal. Every field but `run_id` has a default, so a report
written by an older batchscore (some keys missing) still loads; keys a newer batchscore added are kept
(`extra="allow"`) and written back unchanged."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPORT_VERSION = 1


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Histogram(_Part):
    edges: list[float] = Field(default_factory=list, description="bin edges")
    counts: list[float] = Field(default_factory=list, description="scores per bin")


class ScoreProfile(_Part):
    """What the report and the commit metadata keep of a set of scores."""

    count: int = Field(0, description="finite scores")
    nan: int = Field(0, description="NaN scores")
    mean: float | None = Field(None, description="mean of the finite scores")
    std: float | None = Field(None, description="standard deviation")
    min: float | None = Field(None, description="smallest score")
    max: float | None = Field(None, description="largest score")
    quantiles: dict[str, float] = Field(
        default_factory=dict, description="`p01`, `p05`, `p10`, `p25`, `p50`, `p75`, `p90`, `p95`, `p99`"
    )
    histogram: Histogram | None = Field(None, description="40 equal-width bins between min and max")
    sketch: list[float] = Field(
        default_factory=list, description="257 quantile points (0 to 100 %); sketches of files merge"
    )

    def as_dict(self) -> dict[str, Any]:
        """The plain form models.scoreprofile computes with."""
        return self.model_dump(exclude_none=True)


class QuantileShift(_Part):
    shifts: dict[str, float | None] = Field(
        default_factory=dict, description="`p05` ... `p95`: today - reference"
    )
    max_abs: float | None = Field(None, description="the largest absolute shift")
    max_in_std: float | None = Field(None, description="`max_abs` / the reference's standard deviation")


class DriftCheck(_Part):
    """One date against one reference."""

    reference: str = Field("", description="`ds=DATE` (previous) or `checkpoint` (training)")
    psi: float | None = Field(None, description="population stability index")
    quantile_shift: QuantileShift | None = Field(None, description="quantile shifts")
    breach: bool = Field(False, description="over a threshold")
    reasons: list[str] = Field(default_factory=list, description="why it breached (or why not compared)")


class DateDrift(_Part):
    previous: DriftCheck | None = Field(
        None, description="vs the previous date of the same model; null: none"
    )
    training: DriftCheck | None = Field(None, description="vs the checkpoint's training profile; null: none")
    breach: bool = Field(False, description="either check breached")

    def checks(self) -> list[tuple[str, DriftCheck]]:
        """The references this date was compared with, as (`previous` or `training`, check)."""
        return [(w, c) for w, c in (("previous", self.previous), ("training", self.training)) if c]


class Head(_Part):
    """One head of a multi-head model (or the embedding column) on one date."""

    scores: ScoreProfile | None = Field(None, description="the head's profile on the date")
    drift: DateDrift | None = Field(None, description="the head's drift checks")


class HeadSummary(_Part):
    """One head over the whole run."""

    scores: ScoreProfile | None = Field(None, description="the profile of all the head's scores of the run")
    score_reference: ScoreProfile | None = Field(
        None, description="the checkpoint's training profile of the head"
    )


class Partition(_Part):
    """One scored date."""

    partition: dict[str, str | None] = Field(default_factory=dict, description='e.g. `{"ds": "2026-11-04"}`')
    uri: str | None = Field(None, description="the date's directory under the table (read it through Delta)")
    input_files: int | None = Field(None, description="input files read")
    input_rows: int | None = Field(None, description="input rows (= output + dead letter)")
    output_rows: int | None = Field(None, description="predictions committed")
    dead_letter_rows: int | None = Field(None, description="rows sent to the dead-letter table")
    duplicate_keys: int | None = Field(
        None, description="distinct keys that occur more than once in the date's input (null: not checked)"
    )
    duplicate_key_rows: int | None = Field(
        None,
        description="input rows carrying such a key (all occurrences): dead letters with "
        "output.duplicate_keys=dead_letter, predictions with allow",
    )
    output_files: list[str] = Field(
        default_factory=list, description="files the commit added, relative to the table"
    )
    table_version: int | None = Field(
        None, description="predictions table version that committed the date (`DeltaTable(uri, version=...)`)"
    )
    dead_letter_table_version: int | None = Field(
        None, description="dead-letter table version with the date's rows"
    )
    dead_letter_reasons: dict[str, int] = Field(
        default_factory=dict, description="reason -> rows (the top 10)"
    )
    outcome: str | None = Field(
        None,
        description="`committed`, or `done by another run` (committed first by a run with the same identity)",
    )
    scores: ScoreProfile | None = Field(
        None,
        description="the date's score profile (with several heads: the first head's; kind `embedding`: "
        "of the vectors' L2 norms)",
    )
    drift: DateDrift | None = Field(
        None,
        description="the date's drift checks (with several heads: the first head's; `breach`: any head's)",
    )
    heads: dict[str, Head] = Field(
        default_factory=dict, description="with several heads: head -> its profile and drift (first one too)"
    )

    def head_views(self) -> list[Partition]:
        """With several heads, one view of the date per head (labelled 'DATE HEAD', its profile and
        drift, no counts) for the renderers' per-head tables; none for a single-head run."""
        return [
            Partition(
                partition={k: f"{v} {name}" for k, v in self.partition.items()},
                scores=h.scores,
                drift=h.drift,
                outcome=self.outcome,
            )
            for name, h in self.heads.items()
        ]

    @property
    def label(self) -> str:
        """'2026-11-04' for {'ds': '2026-11-04'}; 'a=1,b=2' for several keys."""
        if len(self.partition) == 1:
            return str(next(iter(self.partition.values())))
        return ",".join(f"{k}={v}" for k, v in self.partition.items()) or "?"


class RegistryInfo(_Part):
    """The version of an MLflow registry model (`model.uri: models:/...`) the run scored with."""

    uri: str | None = Field(None, description="as configured: `models:/NAME@ALIAS` or `models:/NAME/VERSION`")
    name: str | None = Field(None, description="the registered model")
    version: str | None = Field(None, description="the version the uri resolved to on the driver")
    alias: str | None = Field(None, description="the alias resolved, if the uri names one")
    checksum: str | None = Field(
        None, description="sha256 of the version's artifacts (every process refuses other artifacts)"
    )


class ModelInfo(_Part):
    uri: str | None = Field(None, description="where the checkpoint was loaded from")
    format: str | None = Field(None, description="`safetensors`, `torchscript`, `export`, ...")
    version: str | None = Field(None, description="the checkpoint's version")
    sha256: str | None = Field(None, description="hash of the weights (workers refuse other weights)")
    registry: RegistryInfo | None = Field(
        None, description="from an MLflow model registry: the version resolved (else null)"
    )


class Placement(_Part):
    challengers: str | None = Field(
        None,
        description="`shared` (each replica holds every model) or `own` (challengers in pools of their own)",
    )
    setting: str | None = Field(None, description="predict.challengers_placement (`auto`, `shared`, `own`)")
    why: str | None = Field(None, description="why the pool plan chose it")
    replica_memory_gb: float | None = Field(
        None, description="a replica's memory the sizes were held against (null: CPU replicas)"
    )
    model_mb: dict[str, float] = Field(
        default_factory=dict, description="each model's weights in MB (`champion` and each challenger)"
    )
    own: list[str] = Field(default_factory=list, description="the challengers with replicas of their own")
    replicas: dict[str, int] = Field(
        default_factory=dict, description="each pool's replicas: `champion` and each challenger of `own`"
    )


class Pool(_Part):
    runner: str | None = Field(
        None, description="`ray` (a Ray Data job) or `local` (threads in the driver's process, no Ray)"
    )
    mode: str | None = Field(None, description="`fused` (CPU tasks) or `actors` (a replica pool)")
    min_replicas: int | None = Field(None, description="replicas at the start")
    max_replicas: int | None = Field(None, description="the most replicas (fused: the most tasks at once)")
    num_cpus: float | None = Field(None, description="CPUs per replica or task")
    num_gpus: float | None = Field(None, description="GPUs per replica")
    torch_threads: int | None = Field(None, description="torch threads per replica")
    cluster_cpus: float | None = Field(None, description="CPUs of the cluster")
    cluster_gpus: float | None = Field(None, description="GPUs of the cluster")
    placement: Placement | None = Field(
        None, description="with challengers: where they run beside the champion, and why (else null)"
    )


class Replica(_Part):
    device: str | None = Field(None, description="`cpu`, `cuda:0`, ...")
    gpu_ids: list[Any] = Field(default_factory=list, description="GPUs Ray gave it")
    node_id: str | None = Field(None, description="Ray node")
    pid: int | None = Field(None, description="process id")
    model_load_s: float | None = Field(None, description="seconds to load the model")


class Rows(_Part):
    input: int | None = Field(None, description="input rows of the scored dates")
    output: int | None = Field(None, description="predictions committed")
    dead_letter: int | None = Field(None, description="rows in the dead-letter table")
    duplicate_key_rows: int | None = Field(
        None, description="input rows whose key occurs more than once within their date (null: not checked)"
    )
    adopted: int = Field(
        0, description="input rows whose finished work a dead attempt left and this run adopted (resume)"
    )
    scored: int | None = Field(None, description="input rows this run read and scored itself")


class DriftSummary(_Part):
    breach: bool = Field(False, description="any date flagged")
    on_breach: str | None = Field(None, description="`warn` or `fail` (config `drift.on_breach`)")
    thresholds: dict[str, Any] = Field(default_factory=dict, description="the config's `drift` section")


class Commits(_Part):
    committed: list[str] = Field(
        default_factory=list, description="dates committed one by one before the end-of-run commit"
    )
    committed_during_run: list[str] = Field(
        default_factory=list, description="those committed while the pipeline was still running"
    )
    held_for_final_commit: dict[str, str] = Field(
        default_factory=dict, description="date -> why its early commit was refused (left to the end)"
    )


class SkippedInput(_Part):
    date: str | None = Field(None, description="the date")
    uri: str | None = Field(None, description="the file or partition")
    reason: str | None = Field(None, description="why it was left out")


class Stage(_Part):
    """One Ray Data operator (fused stages share one)."""

    name: str = Field("?", description="operator name")
    tasks: int | None = Field(None, description="tasks run")
    rows_in: int | None = Field(None, description="rows in")
    rows_out: int | None = Field(None, description="rows out (a write: the rows it wrote)")
    wall_s: float | None = Field(None, description="first start to last end")
    task_time_s: float | None = Field(None, description="summed over tasks")
    rows_per_s: float | None = Field(None, description="`rows_out` / `wall_s`")


class Timings(_Part):
    model_check_s: float | None = Field(None, description="model found, hashed and checked")
    input_check_s: float | None = Field(None, description="inputs listed and footers checked")
    duplicate_check_s: float | None = Field(
        None, description="the key columns read once more for keys that repeat within a date"
    )
    ray_start_s: float | None = Field(None, description="Ray started or joined")
    pipeline_s: float | None = Field(None, description="the Ray Data pipeline (read to write)")
    profile_s: float | None = Field(None, description="score profiles and drift")
    commit_s: float | None = Field(None, description="checks and Delta commits")
    first_batch_s: float | None = Field(
        None,
        description="seconds to the first scored batch: from the start of the process for `batchscore "
        "score` and `backfill` (imports and Ray's start included, as a user times it), from the call to "
        "`run_score` otherwise (a library call, `batchscore demo`, a backfill's later runs); null when "
        "no row was scored",
    )
    first_batch_after_ray_s: float | None = Field(
        None,
        description="seconds from Ray being up (started or joined by this run) to the first scored batch: "
        "what the Ray runner's replicas or tasks take to start and score; null without Ray or a row",
    )
    total_s: float | None = Field(
        None,
        description="seconds from the same start as first_batch_s (the process's, or the call's) to "
        "the end of the run, so first_batch_s <= total_s; the other timings are each phase's own",
    )

    def items(self) -> list[tuple[str, float | None]]:
        """Every timing, the known ones first, then any a newer batchscore added."""
        return [(k, v) for k, v in self.model_dump().items() if v is None or isinstance(v, (int, float))]


class DeadlineSummary(_Part):
    at: str = Field(description="the run's deadline (`run.deadline` resolved at the start), ISO 8601")
    on_deadline: str = Field("warn", description="`warn` or `fail` (`run.on_deadline`)")
    projected_finish: str | None = Field(
        None, description="the latest ETA from measured throughput while scoring, ISO 8601"
    )
    projected_miss: bool = Field(False, description="a finish past the deadline was projected while scoring")
    missed: bool = Field(False, description="the run was still going at the deadline")


class Comparison(_Part):
    """One date: a challenger's scores against the champion's, on the rows of both tables joined by key."""

    date: str = Field(description="the date compared")
    rows: int = Field(
        0,
        description="joined rows the measures are computed on (top-K tables: the scored rows with "
        "`scores_of: rows`, else the (group, item) pairs both lists hold)",
    )
    champion_rows: int = Field(0, description="the champion's rows of the date (top-K tables: its groups)")
    challenger_rows: int = Field(
        0, description="the challenger's rows of the date (top-K tables: its groups)"
    )
    unmatched: int = Field(
        0,
        description="compared keys in one table only (dead letters of one model; top-K tables: groups)",
    )
    sampled: bool = Field(
        False, description="computed on a deterministic sample of keys (`compare.max_rows`), not every row"
    )
    spearman: float | None = Field(None, description="Spearman rank correlation (1: the same order)")
    mean_champion: float | None = Field(None, description="the champion's mean score")
    mean_challenger: float | None = Field(None, description="the challenger's mean score")
    mean_shift: float | None = Field(None, description="challenger mean - champion mean")
    mean_shift_std: float | None = Field(None, description="`mean_shift` / the champion's standard deviation")
    quantile_shift: dict[str, float] = Field(
        default_factory=dict,
        description="`p5` ... `p95`: challenger - champion percentile, in the champion's standard deviations",
    )
    psi: float | None = Field(None, description="PSI of the challenger over equal-mass bins of the champion")
    groups: int | None = Field(None, description="with `compare.group_by`: groups compared")
    topk_jaccard: float | None = Field(None, description="mean Jaccard overlap of each group's top-k")
    top1_changed: float | None = Field(None, description="share of groups whose top-1 item changed")
    verdict: str = Field("agrees", description="`agrees` or `disagrees` (a threshold broke)")
    broke: list[str] = Field(default_factory=list, description="the measures past their thresholds")
    plot: list[list[float]] = Field(
        default_factory=list, description="sampled `[champion, challenger]` score pairs for the page's plot"
    )
    scores_of: str | None = Field(
        None,
        description="top-K tables: what `spearman`, the shifts and `psi` are computed on: `rows` (every "
        "scored row's two scores, kept while scoring) or `lists` (the listed items' scores: a date not "
        "scored by both models in this run)",
    )


class ChallengerResult(_Part):
    """One challenger of the run: what it committed to its own table and how it compares."""

    name: str = Field(description="`challengers[].name`")
    table: str | None = Field(None, description="its predictions table")
    model: ModelInfo = Field(default_factory=ModelInfo, description="its model")
    status: str = Field(
        "committed",
        description="`committed` (its dates committed to its table), `skipped` (already committed as asked), "
        "`failed` (its model raised, failed to load or its rows did not reconcile: nothing of it published "
        "for the dates named, the champion's commits stand; exit 8)",
    )
    error: str | None = Field(None, description="why it failed")
    dates_committed: list[str] = Field(default_factory=list, description="dates committed to its table")
    rows: int | None = Field(None, description="predictions it committed")
    dead_letter_rows: int | None = Field(None, description="rows in its dead-letter table")
    champion_column: str | None = Field(None, description="the champion's head compared")
    challenger_column: str | None = Field(None, description="its head compared")
    comparisons: list[Comparison] = Field(default_factory=list, description="one per date")
    verdict: str | None = Field(None, description="`agrees` when every date agrees, else `disagrees`")
    commit_s: float | None = Field(None, description="seconds to profile, reconcile and commit its dates")
    compare_s: float | None = Field(None, description="seconds to read, join and compare its dates")


class RunReport(_Part):
    """report.json: one per run that scored something."""

    report_version: int = Field(REPORT_VERSION, description="bumped on incompatible changes")
    run_id: str = Field(description="the run")
    job: str | None = Field(None, description="the config's `name`")
    status: str = Field(
        "succeeded",
        description="`succeeded`; `rejected` (drift with `on_breach: fail`: the flagged date and later ones "
        "not published); `failed` (a date failed its commit checks, `error` says why); `conflict` "
        "(another run committed a date first with another identity: exit 4); `stalled` (no progress for "
        "`run.stall_timeout`: exit 5); `deadline` (still scoring at `run.deadline` with `on_deadline: "
        "fail`: exit 6); `skipped` (all dates already committed; no report file is written then)",
    )
    error: str | None = Field(
        None, description="why the run failed, for `failed`, `conflict`, `stalled` and `deadline`"
    )
    started_at: str | None = Field(None, description="ISO 8601, UTC")
    finished_at: str | None = Field(None, description="ISO 8601, UTC")
    dates: list[str] = Field(default_factory=list, description="the dates scored")
    skipped_committed: list[str] = Field(
        default_factory=list,
        description="dates skipped: already committed with this model, scoring config and inputs",
    )
    rescored_because: dict[str, str] = Field(
        default_factory=dict, description="date -> why it was scored (`not committed yet`, `--force`, ...)"
    )
    config: dict[str, Any] | None = Field(
        None, description="the resolved config (`model.kwargs` values redacted unless in `model.safe_kwargs`)"
    )
    config_hash: str | None = Field(None, description="hash of the resolved config")
    model: ModelInfo = Field(default_factory=ModelInfo, description="the model scored with")
    pool: Pool | None = Field(None, description="the replica plan")
    replicas: list[Replica] = Field(default_factory=list, description="one per model replica that ran")
    partitions: list[Partition] = Field(default_factory=list, description="one per scored date")
    rows: Rows = Field(default_factory=Rows, description="counts over all dates")
    output_kind: str = Field(
        "scores", description="`scores` (one column per head) or `embedding` (profiles are of vector norms)"
    )
    output_columns: list[str] = Field(
        default_factory=list, description="the columns the model's output fills: the heads, or the embedding"
    )
    scores: ScoreProfile | None = Field(
        None, description="the profile of all scores of the run (with several heads: the first head's)"
    )
    score_reference: ScoreProfile | None = Field(
        None, description="the checkpoint's training-time profile (of the first head)"
    )
    heads: dict[str, HeadSummary] = Field(
        default_factory=dict, description="with several heads: head -> its run profile and training reference"
    )
    previous_references: dict[str, ScoreProfile] = Field(
        default_factory=dict,
        description="the profile of each earlier date a drift check compared with that this run did "
        "not score, by its reference (`ds=DATE`; from the Delta log; the first head's): what the "
        "page draws as `vs previous`",
    )
    drift: DriftSummary | None = Field(None, description="drift over the run")
    commits: Commits | None = Field(None, description="dates committed early, during the run")
    skipped_inputs: list[SkippedInput] = Field(
        default_factory=list, description="inputs left out by `input.on_bad_file: skip`"
    )
    stages: list[Stage] = Field(default_factory=list, description="per Ray Data operator")
    timings_s: Timings = Field(default_factory=Timings, description="seconds per phase")
    throughput_rows_per_s: float | None = Field(
        None, description="input rows this run scored (`rows.scored`) / `timings_s.pipeline_s`"
    )
    ray_data_stats: str | None = Field(
        None,
        description="Ray Data's own stats text; in the actors mode the replicas' stages, their CPU per row "
        "after each one's first unit (start-up left out) and each replica's start",
    )
    vacuum: dict[str, Any] | None = Field(None, description="what `output.vacuum_after_run` removed")
    deadline: DeadlineSummary | None = Field(
        None, description="with `run.deadline`: it and the ETA held against it"
    )
    challengers: list[ChallengerResult] = Field(
        default_factory=list, description="with `challengers`: each challenger's commits and comparison"
    )
    report_uri: str | None = Field(None, description="where this report is")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @property
    def drift_breach(self) -> bool:
        return bool(self.drift and self.drift.breach)


# ------------------------------------------------------------------------------------------------
# the reference in docs/reports.md
# ------------------------------------------------------------------------------------------------

BEGIN = "<!-- generated by `batchscore report-reference`: edit pipeline/reporting/schema.py -->"
END = "<!-- end of generated reference -->"


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    for noise in ("typing.", "pipeline.reporting.schema."):
        text = text.replace(noise, "")
    text = re.sub(r"\bNone(Type)?\b", "null", text)
    return text.replace(" | ", " or ")


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    args = getattr(annotation, "__args__", ()) or (annotation,)
    found = []
    for a in args:
        found += [x for x in getattr(a, "__args__", ()) if isinstance(x, type) and issubclass(x, BaseModel)]
        if isinstance(a, type) and issubclass(a, BaseModel):
            found.append(a)
    return found


def reference_markdown() -> str:
    """The key tables of report.json, one per model, generated from the models above."""
    lines, seen = [BEGIN, ""], set()

    def table(model: type[BaseModel], title: str) -> None:
        if model in seen:
            return
        seen.add(model)
        lines.extend([f"### {title}", ""])
        if model.__doc__ and model is not RunReport:
            lines.extend([model.__doc__.strip().splitlines()[0], ""])
        lines.extend(["| key | type | meaning |", "| --- | --- | --- |"])
        subs = []
        for name, field in model.model_fields.items():
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {field.description or ''} |")
            subs += _submodels(field.annotation)
        lines.append("")
        for sub in subs:
            table(sub, f"`{sub.__name__}`")

    table(RunReport, "`RunReport` (the top level)")
    lines.append(END)
    return "\n".join(lines) + "\n"


def docs_section(text: str) -> str:
    """The generated part of docs/reports.md (between the markers), for the docs test."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end] + "\n"


def load(data: bytes | str | dict[str, Any]) -> RunReport:
    """A report from its JSON; pydantic's ValidationError names the key that does not fit."""
    if isinstance(data, dict):
        return RunReport.model_validate(data)
    return RunReport.model_validate(json.loads(data))
