"""Preprocess stage: the CPU part of the feature transforms the model was trained with.

Input: an Arrow batch with the key, partition and feature columns. Output: an Arrow batch with the
pass-through columns unchanged (no copies) and, in the pipeline, the encoded features
(`models.features.encode_table`: one plain column per feature, string hashes or the original
int64/float64 column), which the predict stage turns into the model inputs on the replica's
device; otherwise (and with a user's `preprocessing.function`) one tensor column per model input."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from models.arrays import from_numpy, to_numpy
from models.features import (
    ENCODED_PREFIXES,
    FeatureError,
    FeatureSpec,
    encode_table,
    reject_reasons,
    transform_table,
)
from pipeline.errors import StageError
from pipeline.reporting.progress import count
from pipeline.stages.deadletter import DeadLetterWriter


def to_tensor_column(arr: np.ndarray) -> pa.Array:
    """A numpy array as an Arrow column: 1-D as-is, N-D as Ray's fixed-shape tensor column."""
    if arr.ndim == 1:
        return from_numpy(arr)
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(arr))


def tensor_column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if isinstance(col.type, pa.ExtensionType):
        return col.to_numpy()
    return to_numpy(col)


class FeatureBatch:
    """Preprocessed rows as the fused scorers hand them to a Predictor in the same process: the
    pass-through (or encoded) columns as Arrow, a user function's features as its own numpy
    arrays. Between Ray Data stages the features travel as Arrow tensor columns instead
    (`Preprocessor.__call__`); within one process that round trip was a copy of every feature
    and an import of ray.data in each replica, for nothing."""

    def __init__(self, table: pa.Table, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.table = table
        self.arrays = arrays or {}

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def slice(self, offset: int, length: int) -> FeatureBatch:
        return FeatureBatch(
            self.table.slice(offset, length), {k: v[offset : offset + length] for k, v in self.arrays.items()}
        )

    def to_table(self) -> pa.Table:
        """As `Preprocessor.__call__` returns it: the features as tensor columns."""
        cols = {c: self.table.column(c) for c in self.table.column_names}
        return pa.table({**cols, **{k: to_tensor_column(v) for k, v in self.arrays.items()}})


class Preprocessor:
    """Callable stage. State (the spec or the user function) is set once; work is per batch.

    With `device_transforms` (what the pipeline uses) the built-in transforms stop at what needs
    the Arrow data (hashing strings, keys and numbers out of their buffers) and hand the encoded
    columns to the predict stage, which applies the numeric rest on its device; without it the
    output holds the finished `cat`/`dense` model inputs. A user's function always runs here.

    Rows that cannot be scored (null key, a non-finite value the spec rejects, a user
    preprocessing function that raises) go to the dead-letter writer with a reason; the rest
    continue to the predictor.
    """

    name = "preprocess"

    def __init__(
        self,
        spec: FeatureSpec | None,
        passthrough: list[str],
        function: Callable[[pa.Table], dict[str, np.ndarray]] | str | None = None,
        required: list[str] | None = None,
        key_columns: list[str] | None = None,
        dead_letter: DeadLetterWriter | None = None,
        progress: Any = None,
        device_transforms: bool = False,
        duplicates: Any = None,
    ) -> None:
        if spec is None and function is None:
            raise StageError("preprocess: needs a feature spec or a preprocessing function")
        clash = [c for c in passthrough if c.startswith(ENCODED_PREFIXES)]
        if device_transforms and clash:
            raise StageError(
                f"preprocess: pass-through columns {clash} look like encoded feature columns "
                f"(names starting with {list(ENCODED_PREFIXES)}); rename them"
            )
        if isinstance(function, str):
            from models.checkpoint import import_object

            function = import_object(function)
        self.spec = spec
        self.function = function
        self.device_transforms = device_transforms
        self.passthrough = list(passthrough)
        self.key_columns = list(key_columns or [])
        self.dead_letter = dead_letter
        self.progress = progress  # a pipeline.reporting.progress counter actor, or None
        # pipeline.stages.duplicates.DuplicateKeys: rows whose key repeats go to the dead letters
        self.duplicates = duplicates
        self.required = list(
            dict.fromkeys(
                self.passthrough + (required or []) + (spec.columns if spec and not function else [])
            )
        )

    def _reject(self, rows: pa.Table, reasons: np.ndarray, batch: pa.Table) -> None:
        if self.dead_letter is None:
            counts = dict(Counter(reasons.tolist()))
            raise StageError(f"stage {self.name!r}: {len(reasons)} rows cannot be scored: {counts}")
        self.dead_letter.write(rows, reasons, batch)
        count(self.progress, "rejected", len(reasons))

    def _duplicate_keys(self, batch: pa.Table, reasons: np.ndarray | None) -> np.ndarray | None:
        """`reasons` with the rows whose key repeats within their date (and no other reason yet)."""
        repeated = self.duplicates.repeated(batch) if self.duplicates is not None else None
        if repeated is None:
            return reasons
        from pipeline.stages.duplicates import REASON

        if reasons is None:
            reasons = np.full(batch.num_rows, None, dtype=object)
        reasons[repeated & (reasons == None)] = REASON  # noqa: E711
        return reasons

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The batch preprocessed, as one Arrow table (a Ray Data stage's output)."""
        return self.prepare(batch).to_table()

    def prepare(self, batch: pa.Table) -> FeatureBatch:
        """The batch preprocessed, its features as the function made them (for a Predictor in
        the same process)."""
        out = self._process(batch)
        # with 'read' (counted on entry) this says which stage holds rows when a run stalls
        count(self.progress, "preprocessed", batch.num_rows)
        return out

    def _process(self, batch: pa.Table) -> FeatureBatch:
        missing = [c for c in self.required if c not in batch.column_names]
        if missing:
            raise StageError(
                f"stage {self.name!r}: missing columns {missing}; present columns: {batch.column_names}"
            )
        count(self.progress, "read", batch.num_rows)
        reasons = self._duplicate_keys(
            batch, reject_reasons(batch, self.spec or FeatureSpec(), self.key_columns)
        )
        if reasons is not None:
            bad = np.array([r is not None for r in reasons], dtype=bool)
            self._reject(batch.filter(from_numpy(bad)), reasons[bad], batch)
            batch = batch.filter(from_numpy(~bad))
        try:
            if self.function:
                feats = self.function(batch)
            elif self.device_transforms:  # plain Arrow columns: no tensor conversion, no copies
                encoded = encode_table(batch, self.spec)
                return FeatureBatch(pa.table({**{c: batch.column(c) for c in self.passthrough}, **encoded}))
            else:
                feats = transform_table(batch, self.spec)
        except FeatureError as e:
            raise StageError(f"stage {self.name!r}: {e}") from e
        except Exception as e:
            if self.function is None:
                raise
            why = f"preprocessing error: {type(e).__name__}: {e}"[:500]
            self._reject(batch, np.full(batch.num_rows, why, dtype=object), batch)
            return FeatureBatch(batch.select(self.passthrough).slice(0, 0))
        if not isinstance(feats, dict):
            raise StageError(
                f"stage {self.name!r}: preprocessing function must return dict[str, numpy.ndarray], "
                f"got {type(feats).__name__}"
            )
        arrays = {}
        for name, arr in feats.items():
            arr = np.asarray(arr)
            if len(arr) != batch.num_rows:
                raise StageError(
                    f"stage {self.name!r}: feature {name!r} has {len(arr)} rows, batch has {batch.num_rows}"
                )
            arrays[name] = arr
        return FeatureBatch(batch.select(self.passthrough), arrays)
