"""Predict stage: one model replica per actor, loaded once, on the GPU Ray assigned (or the CPU).

Batches of encoded features (the built-in spec: `models.features.encode_table`'s columns) go
through the numeric feature transforms (`models.transforms.FeatureTransform`, parameters from the
model's feature spec) on the replica's device just before the forward pass; batches that already
hold the model inputs (a user's preprocessing function) go to the model as they are."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from models.arrays import from_numpy
from models.features import ENCODED_PREFIXES, FeatureSpec, encoded_columns, stack_encoded
from pipeline.constcols import constant_strings
from pipeline.errors import StageError
from pipeline.raystate import running_ray
from pipeline.reporting.progress import count
from pipeline.stages.preprocess import FeatureBatch, tensor_column_to_numpy
from pipeline.storage import StorageOptions, StorageSettings, download_dir, is_s3, resolve

if TYPE_CHECKING:  # the driver's config models: not imported where a replica unpickles its work
    from pipeline.config import FeatureSpecConfig, JobConfig, ModelConfig


@dataclass
class ModelSource:
    """Where the model is and what the config adds to its metadata. Small and picklable."""

    uri: str
    storage: StorageOptions = field(default_factory=StorageOptions)
    format: str | None = None
    architecture: dict[str, Any] | None = None
    sha256: str | None = None
    version: str | None = None
    inputs: list[str] | None = None
    feature_spec: dict[str, Any] | None = None

    # a registry model (models:/...): the server (else MLFLOW_TRACKING_URI), and the version this
    # run scores with once the driver resolved it (`pinned`): other processes load that one
    tracking_uri: str | None = None
    registry: Any = None  # models.registry.RegistryVersion

    @classmethod
    def from_config(cls, cfg: JobConfig) -> ModelSource:
        return cls.from_model(cfg.model, cfg.storage, cfg.preprocessing.features)

    @classmethod
    def from_model(
        cls, m: ModelConfig, storage: StorageSettings, features: FeatureSpecConfig | None = None
    ) -> ModelSource:
        """One model section (the job's model, or another's with the same schema)."""
        return cls(
            uri=m.uri,
            storage=StorageOptions.of(storage),
            format=m.format,
            architecture={"class": m.class_path, "kwargs": m.kwargs} if m.class_path else None,
            sha256=m.sha256,
            version=m.version,
            inputs=m.inputs,
            feature_spec=features.model_dump() if features else None,
            tracking_uri=m.tracking_uri,
        )

    def pinned(self, meta: Any) -> ModelSource:
        """This source held to what the driver inspected: the weights' sha256 and, from a
        registry, the resolved version and its artifacts' checksum."""
        return replace(self, sha256=meta.sha256, registry=meta.registry)

    def _fetch(self) -> tuple[str, Any]:
        """(the model on local disk, the registry version or None)."""
        from models.registry import fetch, is_registry_uri

        if is_registry_uri(self.uri):
            return fetch(self.uri, self.tracking_uri, self.registry)
        return self.local_path(), None

    def local_path(self) -> str:
        """The model on local disk; an s3:// or registry model is downloaded once per machine
        into a cache."""
        from models.registry import is_registry_uri

        if is_registry_uri(self.uri):
            return self._fetch()[0]
        if not is_s3(self.uri):
            return resolve(self.uri).path
        loc = resolve(self.uri, self.storage)
        key = hashlib.sha256(f"{self.uri}|{self.sha256}".encode()).hexdigest()[:16]
        cache = os.path.join(tempfile.gettempdir(), "batchscore-models")
        dest = os.path.join(cache, key)
        if not os.path.isdir(dest):
            os.makedirs(cache, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".download-", dir=cache)
            download_dir(loc, tmp)
            try:
                os.rename(tmp, dest)
            except OSError:  # another replica on this machine finished first
                shutil.rmtree(tmp, ignore_errors=True)
        single = os.path.join(dest, posixpath.basename(loc.path))
        return single if os.path.isfile(single) else dest

    def _overrides(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "architecture": self.architecture,
            "expected_sha256": self.sha256,
            "version": self.version,
            "inputs": self.inputs,
            "feature_spec": FeatureSpec.from_dict(self.feature_spec) if self.feature_spec else None,
        }

    def inspect(self):
        """(metadata, weights path) with the sha256 verified; does not import torch. A registry
        alias is resolved here: `pinned(meta)` then holds other processes to that version."""
        from models.checkpoint import inspect_checkpoint

        path, registry = self._fetch()
        meta, wpath = inspect_checkpoint(path, **self._overrides())
        meta.registry = registry
        return meta, wpath

    def load(self, map_location: str = "cpu"):
        from models.checkpoint import load_model

        path, registry = self._fetch()
        loaded = load_model(path, map_location=map_location, **self._overrides())
        loaded.meta.registry = registry
        return loaded


@dataclass
class OutputSpec:
    """What the predictor writes from the model's output (models/outputs.py has the contract):
    kind 'scores', one float32 column per head; kind 'embedding', one vector column of
    `embedding_dim` values (known from the preflight's forward pass)."""

    kind: str = "scores"
    columns: list[str] = field(default_factory=lambda: ["score"])
    embedding_dtype: str = "float32"
    embedding_dim: int | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, embedding_dim: int | None = None) -> OutputSpec:
        out = cfg.output
        return cls(out.kind, out.value_columns, out.embedding_dtype, embedding_dim)

    def empty(self) -> dict[str, pa.Array]:
        if self.kind == "embedding":
            from models.outputs import embedding_type

            kind = embedding_type(self.embedding_dim or 1, self.embedding_dtype)
            return {self.columns[0]: pa.nulls(0, kind)}
        return {c: pa.nulls(0, pa.float32()) for c in self.columns}

    def values(self, out: Any, n: int) -> tuple[dict[str, pa.Array], np.ndarray | None]:
        """The output columns of `n` rows, and which rows cannot be written (a non-finite
        embedding; None: all can). Raises OutputMismatch when `out` does not fit."""
        from models import outputs

        if self.kind == "embedding":
            m = outputs.map_embedding(out, n, self.embedding_dim).float().cpu().numpy()
            self.embedding_dim = int(m.shape[1])  # unknown only when the model check had no row
            stored = m.astype(np.float16) if self.embedding_dtype == "float16" else m
            finite = np.isfinite(stored).all(axis=1)  # a value float16 cannot hold is inf there
            bad = None if finite.all() else ~finite
            return {self.columns[0]: outputs.embedding_column(stored, self.embedding_dtype)}, bad
        heads = outputs.map_heads(out, self.columns, n)
        cols = zip(self.columns, heads, strict=True)
        return {c: from_numpy(h.float().cpu().numpy(), pa.float32()) for c, h in cols}, None


NON_FINITE_EMBEDDING = "non-finite embedding (NaN or inf in the model's output)"


_TORCH_DTYPES: dict[str, Any] = {}


def _init_dtypes() -> None:
    import torch

    for np_dtype, t in (
        (np.float32, torch.float32),
        (np.float64, torch.float64),
        (np.float16, torch.float16),
        (np.int64, torch.int64),
        (np.int32, torch.int32),
        (np.int16, torch.int16),
        (np.int8, torch.int8),
        (np.uint8, torch.uint8),
        (np.bool_, torch.bool),
    ):
        _TORCH_DTYPES[np.dtype(np_dtype).str] = t


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed memory of this process for reuse instead of returning each large
    block to the kernel. By default every allocation over 128 KiB-32 MiB (a batch's tensors, its
    Arrow buffers) is a fresh mmap, and touching it again costs page faults, serialized across
    the threads of a process. Measured on this project's DLRM, 65,536-row batches, 2 CPUs:
    forward 605 k -> 728 k rows/s on one thread, two threads of one process 689 k -> 981 k.
    The process's resident memory then stays at its peak working set until it exits. Not glibc
    (musl, macOS): nothing changes. Returns whether it was applied."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 1 << 31))


def _ray_placement() -> tuple[str, list[str]]:
    """(node id, GPU ids) Ray gave this process; ("", []) outside Ray."""
    ray = running_ray()
    if ray is None:
        return "", []
    node_id, gpu_ids = "", []
    with contextlib.suppress(Exception):
        node_id = ray.get_runtime_context().get_node_id()
    with contextlib.suppress(Exception):
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    return node_id, gpu_ids


def pick_device(requested: str) -> str:
    """The replica's device. In a Ray actor: the GPU Ray assigned (visible as cuda:0), else the
    CPU. Outside Ray (validate, tests, notebooks): the GPU when there is one."""
    import torch

    if requested == "cpu":
        return "cpu"
    in_ray = running_ray() is not None
    gpu_ids = _ray_placement()[1]
    if torch.cuda.is_available() and (requested == "cuda" or gpu_ids or not in_ray):
        return "cuda:0"
    if requested == "cuda":
        raise StageError("predict.device is 'cuda' but no CUDA device is visible to this replica")
    return "cpu"


class Predictor:
    """Callable stage for an actor pool. The model is loaded in `__init__`, once per replica."""

    name = "predict"

    def __init__(
        self,
        source: ModelSource,
        passthrough: list[str],
        run_id: str,
        score_column: str = "score",
        device: str = "auto",
        precision: str = "fp32",
        num_threads: float = 1,
        device_column: str | None = None,
        progress: Any = None,
        output: OutputSpec | None = None,
        dead_letter: Any = None,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        keep_freed_memory()
        _init_dtypes()
        self.device = pick_device(device)
        t0 = time.perf_counter()
        self.loaded = source.load(map_location=self.device)
        self.load_seconds = time.perf_counter() - t0
        self.model = self.loaded.module
        self.inputs = list(self.loaded.meta.inputs)
        self.version = self.loaded.meta.version
        self.passthrough = list(passthrough)
        self.run_id = run_id
        self.output = output or OutputSpec(columns=[score_column])
        self.dead_letter = dead_letter  # a DeadLetterWriter for rows whose output cannot be written
        self.device_column = device_column
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if self.dtype is torch.float16 and not self.device.startswith("cuda"):
            raise StageError("predict.precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on CPU")
        self._pinned: dict[str, Any] = {}
        self.transform: Any = None  # models.transforms.FeatureTransform, made on the first encoded batch
        self.node_id, self.gpu_ids = _ray_placement()
        self.progress = progress  # a pipeline.reporting.progress counter actor, or None
        if progress is not None:
            with contextlib.suppress(Exception):
                progress.replica.remote(
                    f"{self.node_id}:{os.getpid()}",
                    {
                        "device": self.device,
                        "gpu_ids": self.gpu_ids,
                        "node_id": self.node_id,
                        "pid": os.getpid(),
                        "model_load_s": round(self.load_seconds, 3),
                    },
                )

    def share(self) -> Predictor:
        """A predictor for another thread of this process, sharing this one's loaded model (its
        inference is read-only) with buffers of its own."""
        import copy

        other = copy.copy(self)
        other._pinned = {}
        return other

    def _to_device(self, name: str, arr: np.ndarray):
        """CPU: the batch's memory as-is. GPU: one copy into a reused pinned buffer, then an
        asynchronous host-to-device copy (pinned memory is what makes it asynchronous)."""
        import torch

        if not self.device.startswith("cuda"):
            if not arr.flags.writeable:
                arr = arr.copy()  # zero-copy batches are read-only; torch wants writable memory
            return torch.from_numpy(arr)
        buf = self._pinned.get(name)
        if (
            buf is None
            or buf.shape[0] < arr.shape[0]
            or buf.shape[1:] != arr.shape[1:]
            or buf.dtype != _TORCH_DTYPES[arr.dtype.str]
        ):
            buf = torch.empty(arr.shape, dtype=_TORCH_DTYPES[arr.dtype.str], pin_memory=True)
            self._pinned[name] = buf
        staged = buf[: arr.shape[0]]
        staged.numpy()[...] = arr
        return staged.to(self.device, non_blocking=True)

    def __call__(self, batch: pa.Table | FeatureBatch, features: dict[str, Any] | None = None) -> pa.Table:
        """The batch's predictions: its pass-through columns and the output columns. `batch`: a
        Preprocessor's output, as a table (features as tensor columns, or encoded) or as the
        FeatureBatch of the same process (a user function's numpy arrays as they are).
        `features`: the model inputs another predictor made of this very batch
        (`encoded_features`), taken as they are instead of made again; only from a predictor that
        `shares_features` with this one."""
        import torch

        arrays = batch.arrays if isinstance(batch, FeatureBatch) else {}
        if isinstance(batch, FeatureBatch):
            batch = batch.table
        if batch.num_rows == 0:  # every row of the batch went to the dead-letter output
            return self._empty(batch)
        encoded = any(c.startswith(ENCODED_PREFIXES) for c in batch.column_names)
        needed = self.passthrough + (self._encoded_names() if encoded else self.inputs)
        missing = [c for c in needed if c not in batch.column_names and c not in arrays]
        if missing:
            raise StageError(
                f"stage {self.name!r}: missing columns {missing}; present columns: {batch.column_names}"
            )
        autocast = (
            torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode():
            if encoded:
                made = features if features is not None else self.encoded_features(batch)
                tensors = self._model_inputs(made)
            else:
                tensors = [
                    self._to_device(c, arrays[c] if c in arrays else tensor_column_to_numpy(batch.column(c)))
                    for c in self.inputs
                ]
            with autocast:
                out = self.model(*tensors)
        from models.outputs import OutputMismatch

        try:
            values, bad = self.output.values(out, batch.num_rows)
        except OutputMismatch as e:
            raise StageError(f"stage {self.name!r}: {e}") from None
        if bad is not None:
            batch, values = self._drop_unwritable(batch, values, bad)
        n = batch.num_rows
        count(self.progress, "scored", n)
        if n == 0:
            return self._empty(batch)
        cols = {c: batch.column(c) for c in self.passthrough}
        cols.update(values)
        cols["model_version"] = constant_strings(self.version, n)
        cols["run_id"] = constant_strings(self.run_id, n)
        if self.device_column:
            where = f"{self.device} gpu_ids={','.join(self.gpu_ids)} pid={os.getpid()} node={self.node_id}"
            cols[self.device_column] = constant_strings(where, n)
        return pa.table(cols)

    def _feature_transform(self):
        if self.transform is None:
            from models.transforms import FeatureTransform

            spec = self.loaded.meta.spec()
            if spec is None:
                raise StageError(
                    f"stage {self.name!r}: the batch holds encoded features but the model has no feature "
                    "spec (set preprocessing.features or use a checkpoint that has one)"
                )
            self.transform = FeatureTransform(spec, self.device)
        return self.transform

    def _encoded_names(self) -> list[str]:
        return encoded_columns(self._feature_transform().spec)

    def shares_features(self, other: Predictor) -> bool:
        """Whether `other`'s encoded_features are this predictor's: the same feature spec (so the
        same built-in transforms) on the same device. A challenger beside its champion takes them
        instead of transforming every batch again (pipeline/run/challengers.py)."""
        spec, theirs = self.loaded.meta.feature_spec, other.loaded.meta.feature_spec
        return spec is not None and spec == theirs and self.device == other.device

    def encoded_features(self, batch: pa.Table) -> dict[str, Any]:
        """Every feature the built-in transforms make of the encoded columns, on the device: laid
        out feature-major (one contiguous copy per feature, into reused pinned buffers on a GPU),
        copied to the device as they are (keys, null flags, float64 values), transformed there in
        full precision (outside any autocast). Run under torch.inference_mode()."""
        import torch

        transform = self._feature_transform()
        spec = transform.spec
        n = batch.num_rows
        shapes = {
            "cat_key": (len(spec.categorical), n, torch.int64),
            "cat_null": (len(spec.categorical), n, torch.bool),
            "dense_raw": (len(spec.dense), n, torch.float64),
        }
        if self.device.startswith("cuda"):
            staged = [self._pinned_rows(name, *shape) for name, shape in shapes.items()]
            stack_encoded(batch, spec, tuple(t.numpy() for t in staged))
            tensors = [t.to(self.device, non_blocking=True) for t in staged]
        else:
            tensors = [torch.from_numpy(a) for a in stack_encoded(batch, spec)]
        return transform(*tensors)

    def _model_inputs(self, feats: dict[str, Any]) -> list:
        """The model's inputs, in its order, from the transforms' features."""
        unknown = [name for name in self.inputs if name not in feats]
        if unknown:
            raise StageError(
                f"stage {self.name!r}: model inputs {unknown} are not made by the built-in feature "
                f"transforms (they make {sorted(feats)}); use model.inputs from those or a "
                "preprocessing.function"
            )
        return [feats[name] for name in self.inputs]

    def _pinned_rows(self, name: str, features: int, n: int, dtype):
        """A contiguous [features, n] view of a reused pinned buffer (grown when a batch is larger)."""
        import torch

        buf = self._pinned.get(name)
        if buf is None or buf.numel() < features * n:
            buf = torch.empty(max(features * n, 1), dtype=dtype, pin_memory=True)
            self._pinned[name] = buf
        return buf[: features * n].view(features, n)

    def _empty(self, batch: pa.Table) -> pa.Table:
        cols = {c: batch.column(c) for c in self.passthrough if c in batch.column_names}
        cols.update(self.output.empty())
        cols["model_version"] = pa.nulls(0, pa.string())
        cols["run_id"] = pa.nulls(0, pa.string())
        if self.device_column:
            cols[self.device_column] = pa.nulls(0, pa.string())
        return pa.table({k: v.slice(0, 0) for k, v in cols.items()})

    def _drop_unwritable(self, batch: pa.Table, values: dict, bad: np.ndarray):
        """Rows whose output cannot be written (a non-finite embedding) go to the dead letters."""
        if self.dead_letter is None:
            raise StageError(f"stage {self.name!r}: {int(bad.sum())} rows: {NON_FINITE_EMBEDDING}")
        mask = from_numpy(bad)
        reasons = np.full(int(bad.sum()), NON_FINITE_EMBEDDING, dtype=object)
        self.dead_letter.write(batch.filter(mask), reasons, batch)
        count(self.progress, "rejected", len(reasons))
        keep = from_numpy(~bad)
        return batch.filter(keep), {c: v.filter(keep) for c, v in values.items()}


_FUSED_PREDICTORS: dict[str, Predictor] = {}


class FusedScorer:
    """Preprocess and predict inside the read task (CPU-only pools): Ray Data fuses
    read -> this into one task per input block, so the input's rows never pass through the object
    store and no actor has to start (only the predictions go on, to the write tasks). The model is
    loaded once per worker process (a module-level cache holding only the latest run's model) and
    reused by later tasks.

    Batches are whole blocks; preprocessing runs over slices of `preprocess_batch_size` rows
    (the unit that goes to the dead-letter output when a user function fails), the forward pass
    over slices of those of at most `batch_size` rows.
    """

    name = "score"

    def __init__(
        self,
        preprocessor: Any,
        predictor_kwargs: dict[str, Any],
        batch_size: int,
        preprocess_batch_size: int | None = None,
    ) -> None:
        import uuid

        self.key = uuid.uuid4().hex
        self.preprocessor = preprocessor
        self.predictor_kwargs = predictor_kwargs
        self.batch_size = batch_size
        self.preprocess_batch_size = preprocess_batch_size or batch_size

    def _predictor(self) -> Predictor:
        predictor = _FUSED_PREDICTORS.get(self.key)
        if predictor is None:
            _FUSED_PREDICTORS.clear()  # one model per process: the previous run's is dropped
            predictor = _FUSED_PREDICTORS[self.key] = Predictor(**self.predictor_kwargs)
        return predictor

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.score(batch, self._predictor())

    def score(self, batch: pa.Table, predictor: Predictor, at: tuple[int, int] | None = None) -> pa.Table:
        """`batch` preprocessed and scored by `predictor` (the local runner gives each thread its own).
        `at`: where the batch starts in the input (file, row), which the local runner passes and
        only a scorer keeping several models' rows in input order needs (ChallengerScorer)."""
        outs = []
        for i in range(0, max(batch.num_rows, 1), self.preprocess_batch_size):
            features = self.preprocessor.prepare(batch.slice(i, self.preprocess_batch_size))
            for j in range(0, max(features.num_rows, 1), self.batch_size):
                outs.append(predictor(features.slice(j, self.batch_size)))
        return outs[0] if len(outs) == 1 else pa.concat_tables(outs)
