"""Feature spec and the one implementation of the feature transforms.

Training (`jobs.train`) and scoring (`pipeline.stages.preprocess`) both call `transform_table`, so the
tensors a model sees at scoring time are the tensors it was trained on. Everything here is
vectorized over whole columns (pyarrow.compute / numpy); there is no per-row Python.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


class FeatureError(ValueError):
    """A batch does not fit the feature spec (missing column, wrong type)."""


@dataclass
class CategoricalFeature:
    """A categorical column hashed into `buckets` ids. Null goes to bucket 0, values to 1..buckets-1."""

    name: str
    buckets: int


@dataclass
class DenseFeature:
    """A numeric column: fill nulls/NaN -> clip -> log1p -> standardize (in that order).

    `on_nonfinite="reject"` sends rows whose value is null, NaN or +-inf to the dead-letter
    output instead of filling them."""

    name: str
    fill: float = 0.0
    on_nonfinite: str = "fill"
    clip_min: float | None = None
    clip_max: float | None = None
    log1p: bool = False
    mean: float = 0.0
    std: float = 1.0


@dataclass
class FeatureSpec:
    categorical: list[CategoricalFeature] = field(default_factory=list)
    dense: list[DenseFeature] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.categorical] + [f.name for f in self.dense]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        unknown = set(d) - {"categorical", "dense"}
        if unknown:
            raise FeatureError(f"feature spec: unknown keys {sorted(unknown)}")
        try:
            return cls(
                categorical=[CategoricalFeature(**c) for c in d.get("categorical", [])],
                dense=[DenseFeature(**x) for x in d.get("dense", [])],
            )
        except TypeError as e:
            raise FeatureError(f"feature spec: {e}") from e


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _fnv1a_strings(arr: pa.Array) -> np.ndarray:
    """FNV-1a over the bytes of each value, vectorized across rows (loops over byte positions)."""
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    for j in range(int(lengths.max())):
        idx = np.flatnonzero(lengths > j)
        h[idx] = (h[idx] ^ data[starts[idx] + j].astype(np.uint64)) * _FNV_PRIME
    return h


def is_text_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
    )


def is_numeric_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)
    )


def hash_buckets(column: pa.Array | pa.ChunkedArray, buckets: int, name: str = "?") -> np.ndarray:
    """Stable hash of ints or strings into [1, buckets); nulls map to 0. Same result in any process."""
    if buckets < 2:
        raise FeatureError(f"categorical feature {name!r}: buckets must be >= 2, got {buckets}")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.dictionary_decode()
        t = column.type
    if pa.types.is_integer(t):
        raw = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
        h = _splitmix64(raw)
    elif is_text_type(t):
        h = _splitmix64(_fnv1a_strings(column.fill_null("")))
    else:
        raise FeatureError(f"categorical feature {name!r}: expected an integer or string column, got {t}")
    out = (h % np.uint64(buckets - 1)).astype(np.int64) + 1
    if column.null_count:
        out[column.is_null().to_numpy(zero_copy_only=False)] = 0
    return out


def dense_values(column: pa.Array | pa.ChunkedArray, feat: DenseFeature) -> np.ndarray:
    """One dense column through fill -> clip -> log1p -> standardize, as float32."""
    t = column.type
    if not is_numeric_type(t):
        raise FeatureError(f"dense feature {feat.name!r}: expected a numeric column, got {t}")
    x = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    # to_numpy turns nulls into NaN for floats; NaN and +-inf are filled alike.
    x = np.where(np.isfinite(x), x, feat.fill)
    if feat.clip_min is not None or feat.clip_max is not None:
        x = np.clip(x, feat.clip_min, feat.clip_max)
    if feat.log1p:
        x = np.log1p(np.maximum(x, 0.0))
    x = (x - feat.mean) / (feat.std if feat.std > 0 else 1.0)
    return x.astype(np.float32)


def check_columns(present: list[str] | set[str], required: list[str], where: str, error=FeatureError) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise error(f"{where}: missing columns {missing}; present columns: {sorted(present)}")


def transform_table(table: pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Feature tensors for a batch: `cat` int64 [N, C] and `dense` float32 [N, D]."""
    check_columns(table.column_names, spec.columns, "feature transform")
    n = table.num_rows
    cat = np.empty((n, len(spec.categorical)), dtype=np.int64)
    for i, f in enumerate(spec.categorical):
        cat[:, i] = hash_buckets(table.column(f.name), f.buckets, f.name)
    dense = np.empty((n, len(spec.dense)), dtype=np.float32)
    for i, f in enumerate(spec.dense):
        dense[:, i] = dense_values(table.column(f.name), f)
    return {"cat": cat, "dense": dense}


def reject_reasons(table: pa.Table, spec: FeatureSpec, key_columns: list[str]) -> np.ndarray | None:
    """Why each row cannot be scored (None where it can), or None when every row can.

    A null key, or a null/NaN/inf value of a dense feature whose spec says `reject`.
    The first failing rule names the row's reason.
    """
    n = table.num_rows
    reasons = np.full(n, None, dtype=object)
    found = False
    for c in key_columns:
        col = table.column(c)
        if col.null_count:
            mask = col.is_null().to_numpy(zero_copy_only=False) & (reasons == None)  # noqa: E711
            reasons[mask] = f"null key column {c!r}"
            found = True
    for f in spec.dense:
        if f.on_nonfinite != "reject":
            continue
        x = pc.cast(table.column(f.name), pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(x)
        if bad.any():
            mask = bad & (reasons == None)  # noqa: E711
            reasons[mask] = f"non-finite value in {f.name!r} (spec says reject)"
            found = True
    return reasons if found else None


def row_hash64(columns: list[pa.Array | pa.ChunkedArray], seed: int) -> np.ndarray:
    """A 64-bit hash per row over several columns (ints or strings), stable across processes.

    Used to compare the multiset of keys in and out of a run without collecting the keys.
    """
    n = len(columns[0]) if columns else 0
    h = np.full(n, np.uint64(seed), dtype=np.uint64)
    for col in columns:
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            ints = pc.cast(col, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            v = _splitmix64(ints.view(np.uint64))
        elif is_text_type(t):
            v = _fnv1a_strings(col.fill_null(""))
        else:
            v = _fnv1a_strings(pc.cast(col, pa.string()).fill_null(""))
        if col.null_count:
            v = v.copy()
            v[col.is_null().to_numpy(zero_copy_only=False)] = np.uint64(0x9E3779B97F4A7C15)
        h = _splitmix64(h * np.uint64(0x100000001B3) ^ v)
    return h


def fit_dense_stats(table: pa.Table, spec: FeatureSpec) -> FeatureSpec:
    """A copy of `spec` whose dense mean/std are measured on `table` (after fill/clip/log1p)."""
    fitted = FeatureSpec.from_dict(spec.to_dict())
    for f in fitted.dense:
        f.mean, f.std = 0.0, 1.0
        x = dense_values(table.column(f.name), f).astype(np.float64)
        f.mean = float(x.mean()) if len(x) else 0.0
        f.std = float(x.std()) if len(x) and x.std() > 0 else 1.0
    return fitted
