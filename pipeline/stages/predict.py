"""Predict stage: one model replica per actor, loaded once, on the GPU Ray assigned (or the CPU)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from models.features import FeatureSpec
from pipeline.config import JobConfig, StorageConfig
from pipeline.errors import StageError
from pipeline.reporting.progress import count
from pipeline.stages.preprocess import tensor_column_to_numpy
from pipeline.storage import download_dir, is_s3, resolve


@dataclass
class ModelSource:
    """Where the model is and what the config adds to its metadata. Small and picklable."""

    uri: str
    storage: StorageConfig = field(default_factory=StorageConfig)
    format: str | None = None
    architecture: dict[str, Any] | None = None
    sha256: str | None = None
    version: str | None = None
    inputs: list[str] | None = None
    feature_spec: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig) -> ModelSource:
        m = cfg.model
        spec = cfg.preprocessing.features
        return cls(
            uri=m.uri,
            storage=cfg.storage,
            format=m.format,
            architecture={"class": m.class_path, "kwargs": m.kwargs} if m.class_path else None,
            sha256=m.sha256,
            version=m.version,
            inputs=m.inputs,
            feature_spec=spec.model_dump() if spec else None,
        )

    def local_path(self) -> str:
        """The model on local disk; an s3:// model is downloaded once per machine into a cache."""
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
        """(metadata, weights path) with the sha256 verified; does not import torch."""
        from models.checkpoint import inspect_checkpoint

        return inspect_checkpoint(self.local_path(), **self._overrides())

    def load(self, map_location: str = "cpu"):
        from models.checkpoint import load_model

        return load_model(self.local_path(), map_location=map_location, **self._overrides())


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


def pick_device(requested: str) -> str:
    """The replica's device. In a Ray actor: the GPU Ray assigned (visible as cuda:0), else the
    CPU. Outside Ray (validate, tests, notebooks): the GPU when there is one."""
    import torch

    if requested == "cpu":
        return "cpu"
    in_ray, gpu_ids = False, []
    try:
        import ray

        in_ray = ray.is_initialized()
        gpu_ids = ray.get_gpu_ids() if in_ray else []
    except Exception:
        in_ray, gpu_ids = False, []
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
    ) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
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
        self.score_column = score_column
        self.device_column = device_column
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if self.dtype is torch.float16 and not self.device.startswith("cuda"):
            raise StageError("predict.precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on CPU")
        self._pinned: dict[str, Any] = {}
        self.node_id = ""
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                self.node_id = ray.get_runtime_context().get_node_id()
        self.gpu_ids: list = []
        try:
            import ray

            self.gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        except Exception:
            self.gpu_ids = []
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

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        if batch.num_rows == 0:  # every row of the batch went to the dead-letter output
            empty = (
                batch.select([c for c in self.passthrough if c in batch.column_names])
                .append_column(self.score_column, pa.array([], type=pa.float32()))
                .append_column("model_version", pa.array([], type=pa.string()))
                .append_column("run_id", pa.array([], type=pa.string()))
            )
            if self.device_column:
                empty = empty.append_column(self.device_column, pa.array([], type=pa.string()))
            return empty
        needed = self.passthrough + self.inputs
        missing = [c for c in needed if c not in batch.column_names]
        if missing:
            raise StageError(
                f"stage {self.name!r}: missing columns {missing}; present columns: {batch.column_names}"
            )
        tensors = [self._to_device(c, tensor_column_to_numpy(batch.column(c))) for c in self.inputs]
        autocast = (
            torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.model(*tensors)
        if not isinstance(out, torch.Tensor):
            raise StageError(f"stage {self.name!r}: model returned {type(out).__name__}, expected a Tensor")
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.dim() != 1 or out.shape[0] != batch.num_rows:
            raise StageError(
                f"stage {self.name!r}: model output has shape {tuple(out.shape)}, "
                f"expected ({batch.num_rows},) or ({batch.num_rows}, 1)"
            )
        scores = out.float().cpu().numpy()
        n = batch.num_rows
        count(self.progress, "scored", n)
        cols = {c: batch.column(c) for c in self.passthrough}
        cols[self.score_column] = pa.array(scores, type=pa.float32())
        cols["model_version"] = pa.repeat(pa.scalar(self.version), n)
        cols["run_id"] = pa.repeat(pa.scalar(self.run_id), n)
        if self.device_column:
            where = f"{self.device} gpu_ids={','.join(self.gpu_ids)} pid={os.getpid()} node={self.node_id}"
            cols[self.device_column] = pa.repeat(pa.scalar(where), n)
        return pa.table(cols)


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
        predictor = self._predictor()
        outs = []
        for i in range(0, max(batch.num_rows, 1), self.preprocess_batch_size):
            features = self.preprocessor(batch.slice(i, self.preprocess_batch_size))
            for j in range(0, max(features.num_rows, 1), self.batch_size):
                outs.append(predictor(features.slice(j, self.batch_size)))
        return outs[0] if len(outs) == 1 else pa.concat_tables(outs)
