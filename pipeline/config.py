"""Typed job configuration: YAML -> pydantic models, unknown keys rejected, all errors reported at once."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def refuse_credentials(url: str | None, what: str, instead: str) -> str | None:
    """`url` unless it carries `user:password@` in its host part (a config is not for secrets)."""
    if url and "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        raise ValueError(f"credentials must not be put in the {what}; use {instead}")
    return url


class _Strict(BaseModel):
    # YAML reads `version: 2` as a number: text fields take numbers as text.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class InputConfig(_Strict):
    uri: str = Field(description="Root of the input dataset: a local path or s3://bucket/prefix.")
    partition_column: str = Field(
        "ds", description="Hive partition key of the input directories (ds=YYYY-MM-DD)."
    )
    columns: list[str] | None = Field(
        None,
        description="Extra columns to read besides the key and feature columns (projection). "
        "Only the columns the job needs are ever read.",
    )
    dates: list[str] | None = Field(
        None, description="Dates to score when the command line gives none (YYYY-MM-DD)."
    )
    start_date: str | None = Field(None, description="First date of a range (inclusive).")
    end_date: str | None = Field(None, description="Last date of a range (inclusive).")
    timezone: str = Field(
        "UTC", description="Time zone in which --date today/yesterday are read (IANA name)."
    )
    on_bad_file: Literal["fail", "skip"] = Field(
        "fail",
        description="A corrupt/truncated file, or one missing a needed column or with an unusable "
        "type: 'fail' stops the run before any model work, naming file and column; 'skip' leaves "
        "the file out and lists it in the report and the date's commit metadata.",
    )

    @field_validator("dates", "start_date", "end_date", mode="before")
    @classmethod
    def _yaml_dates(cls, v: Any) -> Any:
        """YAML reads an unquoted 2026-11-01 as a date: accept it as the same text."""
        if isinstance(v, dt.date):
            return v.isoformat()
        if isinstance(v, list):
            return [d.isoformat() if isinstance(d, dt.date) else d for d in v]
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {v!r}; expected an IANA name like 'Europe/Berlin'") from e
        return v

    @field_validator("dates")
    @classmethod
    def _dates(cls, v: list[str] | None) -> list[str] | None:
        for d in v or []:
            parse_date(d)
        return v

    @field_validator("start_date", "end_date")
    @classmethod
    def _date(cls, v: str | None) -> str | None:
        if v is not None:
            parse_date(v)
        return v


class CategoricalFeatureConfig(_Strict):
    name: str = Field(description="Input column (integer or string).")
    buckets: int = Field(ge=2, description="Hash buckets; null -> 0, values -> 1..buckets-1.")
    dtype: Literal["integer", "string"] | None = Field(
        None,
        description="The column's type family at training time (an integer hashes by value, a "
        "string by its bytes: the same id gets another bucket). An input column of the other family "
        "is an input error (exit 2) unless cast_from allows it. Unset: either family, one per column "
        "within a run (specs saved before types were recorded; set it).",
    )
    cast_from: Literal["integer", "string"] | None = Field(
        None,
        description="Accept this other family too, converted to dtype before hashing (integers as "
        "their decimal text, text parsed as base-10 int64), so 123 and '123' get the same bucket.",
    )


class DenseFeatureConfig(_Strict):
    name: str = Field(description="Input column (numeric).")
    fill: float = Field(0.0, description="Value used for null, NaN and +-inf.")
    on_nonfinite: Literal["fill", "reject"] = Field(
        "fill", description="'reject' sends rows with null/NaN/inf here to the dead-letter output."
    )
    clip_min: float | None = Field(None, description="Lower clip, applied before log1p.")
    clip_max: float | None = Field(None, description="Upper clip, applied before log1p.")
    log1p: bool = Field(False, description="Apply log1p (negative values count as 0).")
    mean: float = Field(0.0, description="Standardization mean (after log1p).")
    std: float = Field(1.0, gt=0, description="Standardization std (after log1p).")


class FeatureSpecConfig(_Strict):
    categorical: list[CategoricalFeatureConfig] = Field(
        default_factory=list, description="Hashed categorical features, in model input order."
    )
    dense: list[DenseFeatureConfig] = Field(
        default_factory=list, description="Numeric features, in model input order."
    )


class PreprocessingConfig(_Strict):
    features: FeatureSpecConfig | None = Field(
        None,
        description="Feature transforms. Default: the feature spec stored in the checkpoint "
        "(with the statistics measured at training time). Set it for a model file without one.",
    )
    function: str | None = Field(
        None,
        description="Your own preprocessing, 'package.module:function'. Called as "
        "fn(batch: pyarrow.Table) -> dict[str, numpy.ndarray] with one entry per model input. "
        "It gets the columns as they are in the files (no type check or conversion: a column's type "
        "may change between dates; cast to what the model was trained on).",
    )
    batch_size: int = Field(8192, ge=1, description="Rows per preprocessing batch.")
    num_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs per preprocessing task (predict.mode actors; fused tasks use "
        "predict.num_cpus_per_replica).",
    )
    label_selector: dict[str, str] | None = Field(
        None,
        description="Run preprocessing only on nodes with these Ray node labels, e.g. {pool: cpu} "
        "to keep it off GPU nodes (nodes get labels with `ray start --labels`). predict.mode actors "
        "only: fused tasks follow predict.label_selector.",
    )


REGISTRY_URI_RE = re.compile(r"^models:/([^/@]+)(?:@[A-Za-z0-9_-]+|/\d+)$")


class ModelConfig(_Strict):
    uri: str = Field(
        description="Checkpoint directory, or a .pt/.ts (TorchScript), .pt2 (torch.export) or "
        ".safetensors file; local path or s3://. Or a version in an MLflow model registry: "
        "models:/NAME@ALIAS (resolved once per run, on the driver) or models:/NAME/VERSION, whose "
        "artifacts hold a batchscore checkpoint (docs/registry.md)."
    )
    tracking_uri: str | None = Field(
        None,
        description="The MLflow tracking server of a models:/ uri, e.g. http://mlflow.internal:5000; "
        "default: the environment's MLFLOW_TRACKING_URI. No credentials here: MLflow reads them from "
        "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD.",
    )
    format: Literal["safetensors", "torchscript", "export"] | None = Field(
        None, description="Model format; default: from the checkpoint metadata or file suffix."
    )
    class_path: str | None = Field(
        None,
        description="For bare .safetensors weights: the nn.Module class, 'package.module:Class'.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor arguments for class_path. Their values are shown as '<redacted>' in "
        "logs, reports, saved configs and job metadata, except those named in safe_kwargs.",
    )
    safe_kwargs: list[str] = Field(
        default_factory=list, description="Keys of model.kwargs whose values may be shown (not secrets)."
    )
    sha256: str | None = Field(
        None, description="Expected sha256 of the weights file; a mismatch refuses to load."
    )
    version: str | None = Field(
        None, description="Model version written with each prediction; default: the checkpoint's."
    )
    inputs: list[str] | None = Field(
        None,
        description="Names of the preprocessed arrays passed to the model, in order. "
        "Default: the checkpoint's, else ['cat', 'dense'].",
    )

    @field_validator("uri")
    @classmethod
    def _registry_uri(cls, v: str) -> str:
        if v.startswith("models:/") and not REGISTRY_URI_RE.match(v):
            raise ValueError(
                f"{v!r}: a registry model is models:/NAME@ALIAS or models:/NAME/VERSION (a number)"
            )
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return refuse_credentials(
            v, "tracking URI", "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
        )

    @property
    def registry_name(self) -> str | None:
        """The registered model's name of a models:/ uri, else None."""
        m = REGISTRY_URI_RE.match(self.uri)
        return m[1] if m else None

    def identity(self) -> dict[str, Any]:
        """What of this section decides the scores. Not the server it is fetched from; of a
        registry model, the name only: the version it resolves to is added by the run, so
        models:/ranker@champion and models:/ranker/3 naming one version are the same model."""
        data = self.model_dump(mode="json", exclude={"tracking_uri"})
        if self.registry_name is not None:
            data["uri"] = f"models:/{self.registry_name}"
        return data


class PredictConfig(_Strict):
    batch_size: int = Field(8192, ge=1, description="Rows per forward pass.")
    min_replicas: int = Field(1, ge=1, description="Model replicas (actors) kept alive.")
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Upper bound of replicas (actors mode; unset: min_replicas), capped by the "
        "cluster's GPUs/CPUs. In fused mode the most fused tasks at once (each worker holds a copy of "
        "the model); unset: one per CPU.",
    )
    num_cpus_per_replica: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica.")
    mode: Literal["auto", "actors", "staged", "fused"] = Field(
        "auto",
        description="actors: a pool of model replicas, each taking a unit of input (a file or a range of "
        "its row groups) through read, preprocessing, the forward pass and the write in its own process, "
        "several replicas per GPU (predict.replicas_per_gpu); staged: separate read/preprocess tasks "
        "feeding a pool of predictor replicas (what output.top_k and preprocessing.label_selector need, "
        "chosen for them); fused: read, preprocess and predict in one CPU task per block, the model "
        "cached per worker process; auto: actors with GPUs, fused on CPU-only pools.",
    )
    torch_threads: int | Literal["auto"] = Field(
        "auto",
        description="Torch intra-op threads per replica. 'auto': on CPU replicas, the cluster's CPUs "
        "divided among the replicas (reading and writing are mostly waiting on I/O, so the forward pass "
        "may use the CPUs they leave idle); on GPU replicas, num_cpus_per_replica.",
    )
    num_gpus_per_replica: float | Literal["auto"] = Field(
        "auto",
        description="GPUs per replica; 'auto': 1 / replicas_per_gpu when the cluster has GPUs, else 0.",
    )
    replicas_per_gpu: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Replicas sharing one GPU when num_gpus_per_replica is 'auto' (actors mode). Each "
        "replica does its own reading, preprocessing and writing on num_cpus_per_replica CPUs, so "
        "several keep one GPU fed; each holds its own copy of the model and a CUDA context (about "
        "0.5 GiB) on the GPU. 'auto': the CPUs per GPU of the GPU nodes over num_cpus_per_replica "
        "(staged mode: 1).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses the GPU Ray assigned to the replica, else the CPU."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision on GPU (bf16 also works on CPU)."
    )
    label_selector: dict[str, str] | None = Field(
        None,
        description="Place replicas (or, in fused mode, the fused tasks) only on nodes with these Ray "
        "node labels, e.g. {pool: gpu}.",
    )
    reserve_cpus: float | Literal["auto"] = Field(
        "auto",
        description="CPUs kept free of replicas for separate read, preprocess and write tasks. A pool "
        "that would leave fewer is refused before the run starts. 'auto': 1 in staged mode, 0 in "
        "actors mode (its replicas read, preprocess and write themselves).",
    )
    challengers_placement: Literal["auto", "shared", "own"] = Field(
        "auto",
        description="With challengers in the actors mode: 'shared', every replica holds every model; "
        "'own', each challenger gets a pool of replicas of its own, fed the champion replicas' "
        "preprocessed rows (one read, one preprocessing), the replicas split between the pools; "
        "'auto', shared on CPU replicas, and on GPUs shared while the models' weights fit in half of "
        "a replica's memory (predict.replica_memory_gb), the challengers that do not get their own. "
        "The decision and why: the run's log and report.json's pool.placement.",
    )
    replica_memory_gb: float | Literal["auto"] = Field(
        "auto",
        description="GPU memory of one replica in GiB, for challengers_placement 'auto'. 'auto': the "
        "GPU's memory (from the accelerator type Ray reports, 16 GiB when unknown) divided by the "
        "replicas sharing it.",
    )

    @field_validator("replica_memory_gb")
    @classmethod
    def _positive_memory(cls, v: float | str) -> float | str:
        if v != "auto" and float(v) <= 0:
            raise ValueError("must be > 0 (GiB) or 'auto'")
        return v

    @model_validator(mode="after")
    def _replicas(self) -> PredictConfig:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self


class TopKConfig(_Strict):
    group_by: list[str] = Field(
        min_length=1,
        description="Key columns that form a group (e.g. [user_id]); one output row per group and date. "
        "Each must be one of output.key_columns.",
    )
    k: int = Field(ge=1, le=100_000, description="Items kept per group: the k with the highest order_by.")
    order_by: str | None = Field(
        None,
        description="The head the items are ranked by, highest first (ties: by item keys, ascending). "
        "Default: the first of output.score_columns.",
    )
    count_column: str = Field(
        "candidates", description="Output column holding how many scored rows each group had."
    )
    partitions: int | None = Field(
        None,
        ge=1,
        description="Hash partitions of the shuffle by group (merge tasks). Default: one per million "
        "input rows, at least 1, at most 256.",
    )
    max_group_rows: int = Field(
        1_000_000,
        ge=1,
        description="The most rows of one group that one merge task may hold: a block keeps only its "
        "top k per group before the shuffle, so a group holds at most k rows per input block there, "
        "whatever its size. A group over it stops the run, naming the group and its size.",
    )


class OutputConfig(_Strict):
    uri: str = Field(description="Root of the predictions: a local path or s3://bucket/prefix.")
    key_columns: list[str] = Field(
        min_length=1, description="Input columns copied to each prediction row (its identity)."
    )
    partition_columns: list[str] = Field(
        default_factory=lambda: ["ds"], description="Hive partition columns of the output."
    )
    kind: Literal["scores", "embedding"] = Field(
        "scores",
        description="What the model writes per row: 'scores' (one float column per head, see "
        "score_columns) or 'embedding' (the model's [N, d] output as one vector column, "
        "embedding_column). A table holds one kind: a new kind needs its own output.uri.",
    )
    score_column: str = Field(
        "score", description="Name of the prediction column of a single-head model (kind 'scores')."
    )
    score_columns: list[str] | None = Field(
        None,
        min_length=1,
        description="Names of the heads of a multi-head model, in model output order: the model returns "
        "[N, k], a tuple/list of k tensors (mapped by position) or a dict with these keys (by name); "
        "one float32 column each, each profiled and drift-checked on its own. Default: [score_column].",
    )
    embedding_column: str = Field("embedding", description="Name of the vector column of kind 'embedding'.")
    embedding_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="kind 'embedding': 'float32' writes a fixed-size list<float32>[d]; 'float16' writes a "
        "binary column of d little-endian float16 values per row (2 d bytes; Delta Lake has no 16-bit "
        "float type; decode with numpy.frombuffer(value, '<f2')).",
    )
    top_k: TopKConfig | None = Field(
        None,
        description="Write, instead of one row per input row, one row per group and date with the k "
        "best-scored items: the item keys (output.key_columns not in group_by) and every head as list "
        "columns, ranked by order_by. A table holds one kind: top-K needs its own output.uri.",
    )
    target_rows_per_file: int = Field(
        1_000_000,
        ge=1,
        description="Rows per output file: the write stage collects blocks up to this many rows, then "
        "writes them split evenly into files of at most this many, whatever the input files' sizes.",
    )
    compression: Literal["snappy", "zstd", "gzip", "none"] = Field(
        "zstd",
        description="Parquet compression codec of the prediction files ('none': uncompressed). "
        "Any Parquet reader reads each; zstd is the smallest, snappy the fastest to write.",
    )
    max_bad_row_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Fail the run (publish nothing) when dead-letter rows exceed this fraction of a "
        "partition's input rows.",
    )
    duplicate_keys: Literal["allow", "dead_letter", "fail"] = Field(
        "fail",
        description="Input rows whose key_columns repeat within a date (found before any model work "
        "by one more read of the key columns): 'fail' refuses the run (exit 2, naming dates and keys); "
        "'dead_letter' sends every row of a repeated key to the dead-letter table (they count against "
        "max_bad_row_fraction); 'allow' scores each row (one prediction per input row, so the key "
        "repeats in the table too). The report counts them in every mode.",
    )
    verify: Literal["keys", "counts"] = Field(
        "keys",
        description="Reconciliation per partition before publishing: 'keys' checks that the multiset "
        "of input keys equals output + dead-letter keys (hash sums; catches a duplicated block hiding "
        "a lost one; the keys are hashed where they are read and written, not read again); 'counts' "
        "checks row counts only.",
    )
    retention_hours: int = Field(
        168,
        ge=0,
        description="How long files replaced or removed from the Delta tables stay readable (time "
        "travel to last night's version), and how old files of runs that died before committing must "
        "be before they are deleted; used by `batchscore vacuum` and vacuum_after_run.",
    )
    vacuum_after_run: bool = Field(
        False,
        description="After a successful run, vacuum both tables with retention_hours (as `batchscore "
        "vacuum` does).",
    )

    @model_validator(mode="after")
    def _kind_columns(self) -> OutputConfig:
        # (a saved config holds every field: score_column at its default is not "set")
        if self.score_columns is not None and self.score_column != "score":
            raise ValueError("set either score_column (one head) or score_columns (several), not both")
        if self.kind == "embedding" and self.score_columns is not None:
            raise ValueError(
                "score_columns names the heads of kind 'scores'; kind 'embedding' writes embedding_column"
            )
        if self.top_k is not None:
            self._check_top_k(self.top_k)
        cols = self.value_columns
        reserved = {*self.key_columns, *self.partition_columns, "model_version", "run_id"}
        clash = sorted({c for c in cols if c in reserved} | {c for c in cols if cols.count(c) > 1})
        if clash:
            raise ValueError(
                f"output column names {clash} repeat or clash with key, partition or bookkeeping columns"
            )
        return self

    def _check_top_k(self, top: TopKConfig) -> None:
        if self.kind != "scores":
            raise ValueError("top_k ranks scores: it needs output.kind 'scores'")
        outside = [c for c in top.group_by if c not in self.key_columns]
        if outside:
            raise ValueError(f"top_k.group_by {outside} must be among output.key_columns {self.key_columns}")
        if not self.item_columns:
            raise ValueError(
                "top_k: output.key_columns must hold item keys besides the group_by columns "
                "(the ranked lists are made of them)"
            )
        heads = self.value_columns
        if top.order_by is not None and top.order_by not in heads:
            raise ValueError(f"top_k.order_by {top.order_by!r} is not one of the heads {heads}")
        taken = {*self.key_columns, *self.partition_columns, *heads, "model_version", "run_id"}
        if top.count_column in taken:
            raise ValueError(f"top_k.count_column {top.count_column!r} clashes with another output column")
        extra = [c for c in self.partition_columns[1:] if c not in top.group_by]
        if extra:
            raise ValueError(
                f"top_k: output.partition_columns {extra} are not group_by columns (a top-K row holds "
                "one value of each group column only)"
            )

    @property
    def item_columns(self) -> list[str]:
        """top_k: the key columns that identify an item within a group (written as lists)."""
        group = self.top_k.group_by if self.top_k is not None else []
        return [c for c in self.key_columns if c not in group]

    @property
    def order_by(self) -> str:
        """top_k: the head the lists are ranked by."""
        return (self.top_k.order_by if self.top_k is not None else None) or self.value_columns[0]

    @property
    def value_columns(self) -> list[str]:
        """The columns the model's output fills: one per head, or the embedding column."""
        if self.kind == "embedding":
            return [self.embedding_column]
        return list(self.score_columns or [self.score_column])


class StorageConfig(_Strict):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (MinIO, moto)."
    )
    region: str = Field("us-east-1", description="S3 region.")
    anonymous: bool = Field(False, description="Unsigned requests (public buckets).")

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return refuse_credentials(
            v, "endpoint URL", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the provider chain"
        )


class DriftConfig(_Strict):
    enabled: bool = Field(
        True,
        description="Compare each scored date's score distribution with the most recent earlier date "
        "committed by the same model, and with the reference stored in the checkpoint.",
    )
    psi_max: float = Field(
        0.25,
        gt=0,
        description="Population stability index above which a date is flagged (0.1-0.25 is a "
        "moderate shift, above 0.25 a large one).",
    )
    quantile_shift_max: float = Field(
        0.5,
        gt=0,
        description="Largest shift of the 5/25/50/75/95th percentiles, in standard deviations of the "
        "reference, above which a date is flagged.",
    )
    bins: int = Field(10, ge=2, le=100, description="Equal-mass bins of the reference for the PSI.")
    on_breach: Literal["warn", "fail"] = Field(
        "warn",
        description="warn: flag the breach in the report and log, and publish; fail: do not publish the "
        "flagged date (nor later dates of the run; earlier ones are committed) and exit 3 (the report "
        "is still written).",
    )


class ReportConfig(_Strict):
    progress_interval_s: float = Field(
        10.0, gt=0, description="Seconds between progress lines when stderr is not a terminal."
    )
    html: bool = Field(
        True, description="Also write report.html (self-contained, with plots) next to report.json."
    )
    prometheus_textfile: str | None = Field(
        None,
        description="Local path of a Prometheus textfile-collector file to write the run's key figures to "
        "(written atomically at the end of every run).",
    )


class RayConfig(_Strict):
    address: str | None = Field(
        None,
        description="Ray cluster address; default: RAY_ADDRESS or a new local Ray (started without "
        "the dashboard: no web UI, state API or job submission on it; a cluster keeps its own).",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of a new local Ray, or of the local runner (default: all)."
    )
    num_gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs of a new local Ray (default: those it detects). Logical GPUs on a machine "
        "without one give the GPU pool's plan (replicas sharing each GPU) with the replicas on the CPU: "
        "a way to try that shape anywhere.",
    )
    runner: Literal["auto", "ray", "local"] = Field(
        "auto",
        description="Where the stages run. 'ray': a Ray Data job (on ray.address, RAY_ADDRESS or a new "
        "local Ray). 'local': in this process on one thread per CPU, without Ray (CPU models, no "
        "top-K): on one machine it skips Ray's start and its workers' imports. 'auto': 'ray' when an "
        "address is given, Ray is already initialized in this process, the job wants a GPU "
        "(predict.device cuda, a GPU visible to predict.device auto, num_gpus_per_replica > 0), "
        "predict.mode is 'actors', ray.num_gpus is set or output.top_k is set; else 'local'.",
    )


DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")
TIME_OF_DAY_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?\s+(\S+)$")


def parse_duration(value: str) -> float:
    """Seconds of '90', '90s', '30m', '2h', '1h30m' (a bare number is seconds)."""
    m = DURATION_RE.match(value.strip().lower())
    if not value.strip() or m is None or not any(m.groups()):
        raise ValueError(f"expected a duration like '90s', '30m', '2h' or '1h30m', got {value!r}")
    h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + secs


def resolve_deadline(value: str, start: dt.datetime) -> dt.datetime:
    """The deadline of a run started at `start` (aware): 'HH:MM[:SS] ZONE' is the next such time
    of day in that zone after the start (a run started at 07:00 for '06:00' has tomorrow's);
    a duration ('2h') counts from the start."""
    from zoneinfo import ZoneInfo

    m = TIME_OF_DAY_RE.match(value.strip())
    if m is None:
        return start + dt.timedelta(seconds=parse_duration(value))
    hour, minute, second, zone = int(m[1]), int(m[2]), int(m[3] or 0), m[4]
    local = start.astimezone(ZoneInfo(zone))
    at = local.replace(hour=hour, minute=minute, second=second, microsecond=0)
    if at <= local:
        at = (local + dt.timedelta(days=1)).replace(hour=hour, minute=minute, second=second, microsecond=0)
    return at


class RunConfig(_Strict):
    stall_timeout: str | None = Field(
        "30m",
        description="End the run when no row has been read, scored or written for this long ('90s', "
        "'30m', '2h'; a bare number is seconds; null: never). The run exits 5 with a report naming the "
        "stalled stage, its work in flight and the last progress; dates already committed stay "
        "committed, nothing of the others is published.",
    )
    deadline: str | None = Field(
        None,
        description="When the run must be done: a time of day with its zone ('06:00 Europe/Berlin': the "
        "next such time after the start) or a duration from the start ('2h'). While the run goes, the "
        "ETA from measured throughput is held against it: a projected miss is logged and exported to "
        "report.prometheus_textfile as soon as it is seen.",
    )
    on_deadline: Literal["warn", "fail"] = Field(
        "warn",
        description="Still scoring at the deadline: 'warn' logs it and goes on; 'fail' stops the run "
        "(exit 6; dates already committed stay committed, nothing of the others is published).",
    )

    @field_validator("stall_timeout")
    @classmethod
    def _stall(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) <= 0:
            raise ValueError("must be longer than 0 seconds (null: no stall timeout)")
        return v

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                resolve_deadline(v, dt.datetime.now(dt.timezone.utc))
            except (ValueError, KeyError) as e:  # ZoneInfoNotFoundError is a KeyError
                raise ValueError(
                    f"expected a time of day with its zone ('06:00 Europe/Berlin') or a duration "
                    f"('2h'), got {v!r}: {e}"
                ) from None
        return v

    @property
    def stall_timeout_s(self) -> float | None:
        return parse_duration(self.stall_timeout) if self.stall_timeout is not None else None


class ChallengerTopKConfig(_Strict):
    k: int | None = Field(
        None, ge=1, le=100_000, description="Items kept per group; default: the champion's."
    )
    order_by: str | None = Field(
        None,
        description="Its head the items are ranked by; default: the champion's order_by when it is one of "
        "its heads, else its first head.",
    )


class ChallengerOutputConfig(_Strict):
    uri: str = Field(
        description="The challenger's own predictions table (a local path or s3://): never the "
        "champion's output.uri nor another challenger's."
    )
    kind: Literal["scores"] | None = Field(
        None, description="Only 'scores': the comparison compares scores (embeddings have no order)."
    )
    score_column: str | None = Field(
        None, description="The challenger's single head; default: the champion's output.score_column."
    )
    score_columns: list[str] | None = Field(
        None,
        min_length=1,
        description="The challenger's heads (a multi-head model); default: the champion's. The "
        "comparison uses compare_column.",
    )
    target_rows_per_file: int | None = Field(
        None, ge=1, description="Rows per output file; default: the champion's."
    )
    compression: Literal["snappy", "zstd", "gzip", "none"] | None = Field(
        None, description="Parquet codec; default: the champion's."
    )
    max_bad_row_fraction: float | None = Field(
        None, ge=0, le=1, description="Dead-letter fraction that fails its commit; default: the champion's."
    )
    top_k: ChallengerTopKConfig | None = Field(
        None,
        description="With a top-K champion (output.top_k): what differs in its top-K table. Groups, "
        "count column and shuffle are the champion's (the lists are compared group by group).",
    )


class ChallengerConfig(_Strict):
    name: str = Field(description="The challenger's name in logs, reports and metrics.")
    model: ModelConfig = Field(
        description="The challenger's model: the same keys as the top-level model (any source it takes)."
    )
    output: ChallengerOutputConfig = Field(
        description="Its own table. Key, partition, verify and duplicate settings are the champion's "
        "(the comparison joins the two tables by key); the keys here override the rest."
    )
    preprocessing: PreprocessingConfig | None = Field(
        None,
        description="Its own preprocessing; default: the champion's (the batch is preprocessed once "
        "for every model that shares it).",
    )
    compare_column: str | None = Field(
        None,
        description="The challenger's head compared with the champion's compare.score_column; "
        "default: the head of that name if it has one, else its first head.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError("use letters, digits, '_' and '-' only")
        return v


class CompareConfig(_Strict):
    score_column: str | None = Field(
        None,
        description="The champion's head compared (multi-head models: one head is compared); "
        "default: its first head.",
    )
    group_by: list[str] | None = Field(
        None,
        description="Key columns forming a group (e.g. [user_id]): each group's top-k items by the "
        "champion and by the challenger are compared (mean Jaccard, share whose top-1 changed).",
    )
    k: int = Field(10, ge=1, le=10_000, description="Items per group in the top-k overlap.")
    max_rows: int = Field(
        2_000_000,
        ge=1000,
        description="Joined rows compared exactly per date; a date with more is compared on a "
        "deterministic sample of this many keys (by key hash; whole groups with group_by).",
    )
    bins: int = Field(10, ge=2, le=100, description="Equal-mass bins of the champion's scores for the PSI.")
    plot_points: int = Field(
        2000, ge=0, le=20_000, description="Sampled (champion, challenger) pairs kept for the page's plot."
    )
    spearman_min: float = Field(0.9, ge=-1, le=1, description="Verdict: rank correlation below it disagrees.")
    mean_shift_max: float = Field(
        0.25,
        gt=0,
        description="Verdict: |mean shift| in the champion's standard deviations above it disagrees.",
    )
    quantile_shift_max: float = Field(
        0.5,
        gt=0,
        description="Verdict: the largest shift of the 5/25/50/75/95th percentiles, in the champion's "
        "standard deviations, above it disagrees.",
    )
    psi_max: float = Field(0.25, gt=0, description="Verdict: PSI above it disagrees.")
    jaccard_min: float = Field(
        0.5, ge=0, le=1, description="Verdict (with group_by): mean top-k Jaccard below it disagrees."
    )
    top1_changed_max: float = Field(
        0.5, ge=0, le=1, description="Verdict (with group_by): share of groups whose top-1 changed above it."
    )


class JobConfig(_Strict):
    name: str = Field(description="Job name, used in run ids and reports.")
    input: InputConfig
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    model: ModelConfig
    predict: PredictConfig = Field(default_factory=PredictConfig)
    output: OutputConfig
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    challengers: list[ChallengerConfig] = Field(
        default_factory=list,
        description="Models scored beside `model` (the champion) in the same pass: one read, one "
        "preprocessing per distinct preprocessing, each model's predictions in its own table, compared "
        "with the champion's per date (docs/challengers.md).",
    )
    compare: CompareConfig = Field(
        default_factory=CompareConfig, description="How challengers are compared with the champion."
    )

    @model_validator(mode="after")
    def _challengers(self) -> JobConfig:
        problems = _challenger_problems(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @model_validator(mode="after")
    def _partitions(self) -> JobConfig:
        if self.output.partition_columns[:1] != [self.input.partition_column]:
            raise ValueError(
                f"output.partition_columns must start with the input's date column "
                f"{self.input.partition_column!r} (a partition is committed per date), "
                f"got {self.output.partition_columns}"
            )
        return self

    @model_validator(mode="after")
    def _input_outside_output(self) -> JobConfig:
        out, inp = self.output.uri.rstrip("/"), self.input.uri.rstrip("/")
        if inp == out or inp.startswith(out + "/"):
            raise ValueError(
                f"input.uri {self.input.uri!r} is inside output.uri {self.output.uri!r}: `batchscore "
                "vacuum` deletes files there that are not in the predictions table; keep them apart"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError("use letters, digits, '_' and '-' only")
        return v

    def digest(self) -> str:
        """A stable hash of the resolved config (for run ids and manifests)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def scoring_digest(self) -> str:
        """A hash of what decides the predictions (not how the run is sized): input, features,
        model, output layout. Equal digests + equal model sha256 = the same scores."""
        what = {
            "input": self.input.model_dump(mode="json", include={"uri", "partition_column", "columns"}),
            "preprocessing": _without_unset_types(
                self.preprocessing.model_dump(mode="json", include={"features", "function"})
            ),
            "model": self.model.identity(),
            "output": self.output.model_dump(
                mode="json", include={"uri", "key_columns", "partition_columns", "score_column"}
            ),
        }
        # what an output kind adds counts only when set: configs from before kinds keep their identity
        kinds = self.output.model_dump(
            mode="json",
            include={
                "kind": True,
                "score_columns": True,
                "embedding_column": True,
                "embedding_dtype": True,
                # how the top-K is computed (partitions, max_group_rows) does not change it
                "top_k": {"group_by", "k", "order_by", "count_column"},
                # which rows get a prediction when keys repeat (the default, fail, scores none)
                "duplicate_keys": True,
            },
            exclude_defaults=True,
        )
        if kinds:
            what["output"]["kinds"] = kinds
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _nested(a: str, b: str) -> bool:
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def challenger_job(cfg: JobConfig, ch: ChallengerConfig) -> JobConfig:
    """The job a challenger would be on its own: the champion's config with the challenger's
    model, table and (when set) preprocessing. Its scoring identity is that job's, so a date is
    rescored in the challenger's table when the challenger's model or config changes."""
    data = cfg.model_dump(mode="python")
    data.update(challengers=[], model=ch.model.model_dump(mode="python"))
    if ch.preprocessing is not None:
        data["preprocessing"] = ch.preprocessing.model_dump(mode="python")
    own = ch.output.model_dump(mode="python", exclude_none=True)
    own_top = own.pop("top_k", {})
    if {"score_column", "score_columns", "kind"} & own.keys():
        data["output"].update(score_column="score", score_columns=None)
    top = data["output"].get("top_k")
    data["output"].update(own)
    if top is not None:  # the champion's groups; its own k and head
        heads = OutputConfig.model_validate({**data["output"], "top_k": None}).value_columns
        if top.get("order_by") not in heads:
            top["order_by"] = None
        data["output"]["top_k"] = {**top, **own_top}
    data["report"]["prometheus_textfile"] = None
    return JobConfig.model_validate(data)


def _challenger_problems(cfg: JobConfig) -> list[str]:
    """What is wrong with the challengers and compare sections, each naming its key."""
    if not cfg.challengers:
        return []
    out, problems = cfg.output, []
    if out.kind != "scores":
        problems.append("challengers: the champion's output must be kind 'scores'")
    if out.top_k is not None and cfg.compare.group_by not in (None, out.top_k.group_by):
        problems.append(
            f"compare.group_by {cfg.compare.group_by} differs from output.top_k.group_by "
            f"{out.top_k.group_by}: a top-K table's lists are compared by its own groups"
        )
    head = cfg.compare.score_column
    if head is not None and head not in out.value_columns:
        problems.append(f"compare.score_column {head!r} is not one of the heads {out.value_columns}")
    outside = [c for c in cfg.compare.group_by or [] if c not in out.key_columns]
    if outside:
        problems.append(f"compare.group_by {outside} must be among output.key_columns {out.key_columns}")
    if cfg.compare.group_by and not [c for c in out.key_columns if c not in cfg.compare.group_by]:
        problems.append("compare.group_by: output.key_columns must hold item keys besides the group columns")
    seen: dict[str, int] = {}
    tables = [("output.uri", out.uri), ("input.uri", cfg.input.uri)]
    for i, ch in enumerate(cfg.challengers):
        where = f"challengers.{i}"
        if ch.name in seen:
            problems.append(f"{where}.name {ch.name!r} repeats challengers.{seen[ch.name]}.name")
        seen.setdefault(ch.name, i)
        for key, uri in tables:
            if _nested(ch.output.uri, uri):
                problems.append(f"{where}.output.uri {ch.output.uri!r} is or nests with {key} {uri!r}")
        tables.append((f"{where}.output.uri", ch.output.uri))
        try:
            job = challenger_job(cfg, ch)
        except ValidationError as e:
            problems += [f"{where}: {x['msg']}" for x in e.errors()]
            continue
        if out.top_k is None and ch.output.top_k is not None:
            problems.append(f"{where}.output.top_k: only with a top-K champion (output.top_k)")
        if out.top_k is not None and ch.preprocessing is not None:
            problems.append(
                f"{where}.preprocessing: with output.top_k every challenger shares the champion's "
                "preprocessing (the staged pool preprocesses once, before the replicas)"
            )
        heads = job.output.value_columns
        if ch.compare_column is not None and ch.compare_column not in heads:
            problems.append(f"{where}.compare_column {ch.compare_column!r} is not one of its heads {heads}")
    return problems


def _without_unset_types(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The features' unset dtype/cast_from left out: configs from before feature types keep
    their scoring identity (and their committed dates are not rescored for it)."""
    for c in (preprocessing.get("features") or {}).get("categorical", []):
        for k in ("dtype", "cast_from"):
            if c.get(k) is None:
                c.pop(k, None)
    return preprocessing


def parse_date(value: str) -> dt.date:
    if not DATE_RE.match(value):
        raise ValueError(f"expected a date YYYY-MM-DD, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"expected a date YYYY-MM-DD, got {value!r}: {e}") from e


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the section holding `loc` accepts, found by walking the models along the path
    (list indexes and dict keys of free-form sections are stepped over)."""
    model: Any = JobConfig
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        inner = [a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type)]
        subs = [a for a in inner if issubclass(a, BaseModel)]
        model = subs[0] if subs else None
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1, cutoff=0.6)
    return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = _unknown_key_message(e["loc"])
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg}")
    return f"{source}: {len(lines)} error(s):\n" + "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (numbers, lists, null...)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        parts = key.split(".")
        node = raw
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
            node = node[p]
        try:
            node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: cannot parse value: {e}") from e
    return raw


ENV_PREFIX = "env:"


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Load a YAML config file; `env:NAME` reads the YAML text from environment variable NAME
    (how `batchscore submit` ships a config that lives outside the project directory)."""
    if str(path).startswith(ENV_PREFIX):
        name = str(path)[len(ENV_PREFIX) :]
        if name not in os.environ:
            raise ConfigError(f"{path}: environment variable {name} is not set")
        text = os.environ[name]
    else:
        try:
            text = Path(path).read_text()
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: config file does not exist") from e
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    cfg = config_from_dict(apply_overrides(raw, overrides or []), source=str(path))
    if not str(path).startswith(ENV_PREFIX):
        from models.imports import allow_imports_from

        # a model class or preprocessing function beside the config (or in the working
        # directory) imports without PYTHONPATH, as a user of recipe tools expects
        named = [p for p in (cfg.model.class_path, cfg.preprocessing.function) if p]
        for ch in cfg.challengers:  # a challenger's own model class or preprocessing function too
            named += [p for p in (ch.model.class_path, ch.preprocessing and ch.preprocessing.function) if p]
        allow_imports_from([str(Path(path).resolve().parent), os.getcwd()], named)
    return cfg


def config_from_dict(raw: dict[str, Any], source: str = "config") -> JobConfig:
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


REDACTED = "<redacted>"


def shown_config(cfg: JobConfig) -> dict[str, Any]:
    """The config as logs, reports and saved copies show it: model.kwargs values redacted unless
    listed in model.safe_kwargs (a constructor argument may be a token or a password)."""
    data = cfg.model_dump(mode="json")
    for shown, model in [(data["model"], cfg.model)] + [
        (d["model"], ch.model) for d, ch in zip(data.get("challengers", []), cfg.challengers, strict=True)
    ]:
        safe = set(model.safe_kwargs)
        shown["kwargs"] = {k: (v if k in safe else REDACTED) for k, v in model.kwargs.items()}
    return data


def dump_config(cfg: JobConfig, redact: bool = True) -> str:
    """YAML of the resolved config; `redact=False` only where the job itself needs the values."""
    data = shown_config(cfg) if redact else cfg.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    text = text.replace("pipeline.config.", "").replace("NoneType", "null")
    return text.replace(" | ", " or ").replace("|", " or ")


def reference_markdown() -> str:
    """The config reference (docs/config.md), generated from the models so it cannot drift."""
    lines = [
        "# Config reference",
        "",
        "Generated by `batchscore config-reference` from `pipeline/config.py`; a test keeps this",
        "file equal to the generated text. Unknown keys are rejected; every error is reported",
        "with its key path. Override any key on the command line with `--set key.path=value`",
        "(the value is read as YAML: `--set predict.max_replicas=4`, `--set input.dates=[2026-11-01]`).",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows, subs = [], []
        for name, field in model.model_fields.items():
            ann = field.annotation
            inner = [
                a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((f"{prefix}{name}", ann))
                continue
            if field.is_required():
                default = "**required**"
            elif field.default_factory is not None:
                default = f"`{json.dumps(field.default_factory())}`"
            else:
                default = f"`{json.dumps(field.default)}`"
            rows.append(f"| `{prefix}{name}` | {_type_name(ann)} | {default} | {field.description or ''} |")
            is_list = str(ann).startswith("list[")
            for sub in inner:
                subs.append((f"{prefix}{name}[]" if is_list else f"{prefix}{name}", sub))
        if rows:
            lines.extend(["| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""])
        for path, sub in subs:
            lines.extend([f"## `{path}`", ""])
            walk(sub, f"{path}.")

    walk(JobConfig, "")
    return "\n".join(lines).rstrip() + "\n"
