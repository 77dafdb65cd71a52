"""The CPU half of the built-in feature transforms (the spec itself: models/featurespec.py).

The transforms are split where the data has to be: `encode_table` does on CPU what needs the Arrow
buffers (FNV-1a over string bytes, integer keys out of their buffers, null bitmaps, numbers as
float64) and returns three plain arrays; `models.transforms.FeatureTransform` (torch) maps them to
the model inputs on any device. The predict stage runs that half on the replica's device, just
before the forward pass. `transform_table` runs both halves on the CPU, for training (`jobs.train`,
`fit_dense_stats`) and for anyone who wants the model inputs as numpy arrays, so the tensors a model
sees at scoring time are the tensors it was trained on. Everything is vectorized over whole columns
(pyarrow.compute / numpy / torch); there is no per-row Python, and torch is imported only by the
functions that run the transforms.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.arrays import from_numpy, int_dtype, null_mask, to_numpy, value_slots

# The spec lives below both halves of the transforms (models/transforms.py imports it too, and is
# imported here only inside the functions that run torch); named here as before for its users.
from models.featurespec import (  # noqa: F401 - re-exported: models.features is the spec's public home
    TYPE_FAMILIES,
    CategoricalFeature,
    DenseFeature,
    FeatureError,
    FeatureSpec,
    check_spec,
)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 in numpy, for `row_hash64`: key fingerprints, computed and compared on CPU only.
    The bucket ids use models.transforms.splitmix64 (torch), the one the models were trained with."""
    return _splitmix64_inplace(x.astype(np.uint64, copy=True))


_SPLITMIX_BLOCK = 32768  # values per step: the block and its shifted copy stay in the CPU's cache


def _splitmix64_inplace(x: np.ndarray) -> np.ndarray:
    """`_splitmix64` into `x` itself (uint64, owned by the caller), a cache-sized block at a time
    with one scratch block: the same values, without the six full-size temporaries numpy makes
    for the expression (key hashing runs on every row read and written)."""
    tmp = np.empty(min(len(x), _SPLITMIX_BLOCK), dtype=np.uint64)
    for i in range(0, len(x), _SPLITMIX_BLOCK):
        b = x[i : i + _SPLITMIX_BLOCK]
        t = tmp[: len(b)]
        np.right_shift(b, np.uint64(30), out=t)
        b ^= t
        b *= np.uint64(0xBF58476D1CE4E5B9)
        np.right_shift(b, np.uint64(27), out=t)
        b ^= t
        b *= np.uint64(0x94D049BB133111EB)
        np.right_shift(b, np.uint64(31), out=t)
        b ^= t
    return x


def _all_of_one_length(offsets: np.ndarray, lengths: np.ndarray, data_len: int) -> bool:
    return (
        len(lengths) > 0
        and lengths[0] > 0
        and bool((lengths == lengths[0]).all())
        and int(offsets[-1]) <= data_len
    )


def _fnv1a_fixed(rows: np.ndarray, h: np.ndarray) -> np.ndarray:
    """FNV-1a of equal-length values laid out back to back, `rows` [n, length] uint8: one strided
    column of bytes per step, no gather (about twice as fast as the general loop below)."""
    for j in range(rows.shape[1]):
        np.bitwise_xor(h, rows[:, j], out=h)
        h *= _FNV_PRIME
    return h


def _fnv1a_strings(arr: pa.Array) -> np.ndarray:
    """FNV-1a over the bytes of each value (uint64), vectorized across rows, looping over byte
    positions. What a null slot hashes to is unspecified (callers mask nulls).

    Positions every non-null value has are one gather + xor + multiply over all rows; only the
    positions past the shortest value need to find the rows still going."""
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        off_type = np.int32
    else:
        if not (pa.types.is_large_string(t) or pa.types.is_large_binary(t)):
            arr = arr.cast(pa.large_binary())  # string_view / binary_view, other string-likes
        off_type = np.int64
    n = len(arr)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=off_type)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    if len(data) == 0:
        data = np.zeros(1, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if _all_of_one_length(offsets, lengths, len(data)):  # ids like '2026-10-01-625000'
        return _fnv1a_fixed(data[offsets[0] : offsets[-1]].reshape(n, int(lengths[0])), h)
    valid = lengths if not arr.null_count else lengths[~null_mask(arr)]
    common = int(valid.min()) if len(valid) else 0
    byte = np.empty(n, dtype=np.uint8)
    pos = starts.copy()
    for _ in range(common):
        np.take(data, pos, out=byte, mode="clip")  # clip: a null slot may be shorter (masked later)
        np.bitwise_xor(h, byte, out=h)
        h *= _FNV_PRIME
        pos += 1
    for j in range(common, int(lengths.max())):
        idx = np.flatnonzero(lengths > j)
        hi = h[idx]
        hi ^= data[starts[idx] + j]
        hi *= _FNV_PRIME
        h[idx] = hi
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


# The CPU half hands over one plain Arrow column per feature, named after it: int64 keys of a
# categorical feature (integer values, or FNV-1a of the string bytes as uint64 bits), float64
# values of a dense one; a null stays a null (the column's validity bitmap). Columns that are
# already int64 or float64 go over as they are, without a copy.
CAT_KEY_PREFIX = "cat_key:"
DENSE_RAW_PREFIX = "dense_raw:"
ENCODED_PREFIXES = (CAT_KEY_PREFIX, DENSE_RAW_PREFIX)

# Strings hash fastest through a dictionary when they repeat: sampled rows decide.
_DICT_SAMPLE_ROWS = 1024
_DICT_MAX_DISTINCT = 64  # per sample slice: a cheap hash table and few values to hash


def encoded_columns(spec: FeatureSpec) -> list[str]:
    """The names of the encoded columns of a spec, categorical first, in spec order."""
    return [CAT_KEY_PREFIX + f.name for f in spec.categorical] + [
        DENSE_RAW_PREFIX + f.name for f in spec.dense
    ]


def type_family(t: pa.DataType) -> str | None:
    """'integer' or 'string' (the two ways a categorical column hashes), None for anything else."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "integer"
    return "string" if is_text_type(t) else None


def type_problem(t: pa.DataType, feat: CategoricalFeature) -> str | None:
    """Why a column of type `t` cannot feed `feat` as the model was trained, or None when it can
    (the one rule the validate stage and the hashing both apply)."""
    family = type_family(t)
    if family is None:
        return f"has type {t}, expected an integer or string column"
    if feat.dtype is None or family == feat.dtype or feat.cast_from == family:
        return None
    return (
        f"has type {t} ({family}), but the model was trained on {feat.dtype} values of it "
        f"({family} and {feat.dtype} values hash to different buckets). Cast the column back to "
        f"{feat.dtype}, or set cast_from: {family} on the feature in the spec to convert it "
        "(the same bucket either way)"
    )


def _convert(column: pa.Array | pa.ChunkedArray, feat: CategoricalFeature) -> pa.Array | pa.ChunkedArray:
    """A column of the family `feat.cast_from` as `feat.dtype`: integers as their decimal text,
    text parsed as int64 (a value that is not a base-10 integer is an error naming the column)."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    target = pa.large_string() if feat.dtype == "string" else pa.int64()
    try:
        return pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise FeatureError(
            f"categorical feature {feat.name!r}: cannot convert its {column.type} values to "
            f"{feat.dtype} (cast_from: {feat.cast_from}): {e}"
        ) from None


def categorical_keys(
    column: pa.Array | pa.ChunkedArray, feat: CategoricalFeature
) -> pa.Array | pa.ChunkedArray:
    """`categorical_key_column` after the type check against what the model was trained on, with
    the spec's declared conversion applied; the check again where the batches are hashed, so a
    column the validate stage did not see (a new file, another entry point) cannot mix hashes."""
    why = type_problem(column.type, feat)
    if why is not None:
        raise FeatureError(f"categorical feature {feat.name!r}: column {why}")
    if feat.dtype is not None and type_family(column.type) != feat.dtype:
        column = _convert(column, feat)
    return categorical_key_column(column, feat.name)


def record_types(table: pa.Table, spec: FeatureSpec) -> FeatureSpec:
    """A copy of `spec` with each categorical feature's `dtype` the family of its column in
    `table` (the training data), so scoring can refuse a column whose type changed since."""
    recorded = FeatureSpec.from_dict(spec.to_dict())
    for f in recorded.categorical:
        family = type_family(table.schema.field(f.name).type)
        if family is None:
            raise FeatureError(
                f"categorical feature {f.name!r}: training column has type "
                f"{table.schema.field(f.name).type}, expected an integer or string column"
            )
        if f.dtype is not None and f.dtype != family and f.cast_from != family:
            raise FeatureError(
                f"categorical feature {f.name!r}: spec says {f.dtype}, training data is {family}"
            )
        f.dtype = f.dtype or family
    return recorded


def _mostly_repeats(arr: pa.Array) -> bool:
    n = len(arr)
    if n < 8 * _DICT_SAMPLE_ROWS:
        return False
    for start in (0, n // 2, n - _DICT_SAMPLE_ROWS):
        if pc.count_distinct(arr.slice(start, _DICT_SAMPLE_ROWS)).as_py() > _DICT_MAX_DISTINCT:
            return False
    return True


def _key_values(arr: pa.Array, name: str) -> np.ndarray:
    """One chunk's 64-bit keys (int64 holding uint64 bits); values at null slots unspecified."""
    t = arr.type
    if pa.types.is_dictionary(t):  # hash each distinct value once (nulls in it: see callers)
        keys = _key_values(arr.dictionary, name)
        if len(keys) == 0:
            return np.zeros(len(arr), dtype=np.int64)
        return np.take(keys, value_slots(arr.indices, int_dtype(arr.indices.type)), mode="clip")
    if pa.types.is_integer(t):
        return value_slots(arr, int_dtype(t)).astype(np.int64)  # uint64 wraps to the same bits
    if is_text_type(t):
        if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
            arr = arr.cast(pa.large_binary())  # offsets + one data buffer, as the hashing reads them
        if _mostly_repeats(arr):
            return _key_values(pc.dictionary_encode(arr), name)
        return _fnv1a_strings(arr).view(np.int64)
    raise FeatureError(f"categorical feature {name!r}: expected an integer or string column, got {t}")


def categorical_key_column(column: pa.Array | pa.ChunkedArray, name: str = "?") -> pa.Array | pa.ChunkedArray:
    """The CPU half of a categorical feature: its int64 keys, nulls kept. int64 goes as it is;
    other integers are widened; strings (plain, large, view, binary, dictionary-encoded) become
    FNV-1a of their bytes. `models.transforms` maps keys to bucket ids."""
    t = column.type
    if pa.types.is_int64(t):
        return column
    if not (pa.types.is_integer(t) or is_text_type(t) or pa.types.is_dictionary(t)):
        raise FeatureError(f"categorical feature {name!r}: expected an integer or string column, got {t}")
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for c in chunks:
        if pa.types.is_dictionary(t) and c.dictionary.null_count:  # a null value inside: decode (rare)
            c = c.dictionary_decode()
        out.append(from_numpy(_key_values(c, name), like=c))
    return pa.chunked_array(out, type=pa.int64()) if isinstance(column, pa.ChunkedArray) else out[0]


def dense_raw_column(column: pa.Array | pa.ChunkedArray, feat: DenseFeature) -> pa.Array | pa.ChunkedArray:
    """The CPU half of a dense feature: its values as float64, nulls kept (float64 goes as it is)."""
    t = column.type
    if not is_numeric_type(t):
        raise FeatureError(f"dense feature {feat.name!r}: expected a numeric column, got {t}")
    return column if pa.types.is_float64(t) else pc.cast(column, pa.float64())


def check_columns(present: list[str] | set[str], required: list[str], where: str, error=FeatureError) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise error(f"{where}: missing columns {missing}; present columns: {sorted(present)}")


def encode_table(table: pa.Table, spec: FeatureSpec) -> dict[str, pa.Array | pa.ChunkedArray]:
    """The CPU half of the transforms for a batch: one plain column per feature, named as in
    `encoded_columns(spec)` (see `stack_encoded` and `models.transforms` for the rest)."""
    check_spec(spec)
    check_columns(table.column_names, spec.columns, "feature transform")
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in spec.categorical:
        out[CAT_KEY_PREFIX + f.name] = categorical_keys(table.column(f.name), f)
    for f in spec.dense:
        out[DENSE_RAW_PREFIX + f.name] = dense_raw_column(table.column(f.name), f)
    return out


def _copy_rows(column: pa.Array | pa.ChunkedArray, name: str, typ: pa.DataType, values: np.ndarray, nulls):
    """Copy an encoded column into a row of a feature-major array; null flags into `nulls`
    (an array row), or NaN into the values where `nulls` is None."""
    if column.type != typ:
        raise FeatureError(f"encoded column {name!r}: expected {typ}, got {column.type}")
    if len(column) != len(values):
        raise FeatureError(f"encoded column {name!r}: {len(column)} rows, expected {len(values)}")
    pos = 0
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        end = pos + len(chunk)
        values[pos:end] = value_slots(chunk, values.dtype)
        if chunk.null_count:
            isnull = null_mask(chunk)
            if nulls is None:
                values[pos:end][isnull] = np.nan
            else:
                nulls[pos:end] = isnull
        elif nulls is not None:
            nulls[pos:end] = False
        pos = end


def stack_encoded(
    columns: pa.Table | dict[str, pa.Array | pa.ChunkedArray],
    spec: FeatureSpec,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The encoded columns as the feature-major arrays `models.transforms.FeatureTransform` takes:
    keys int64 [C, N], null flags bool [C, N], values float64 [D, N] (a null value -> NaN).
    Each feature is one contiguous copy; `out` (e.g. views of pinned host memory) receives them."""
    names = encoded_columns(spec)
    present = columns.column_names if isinstance(columns, pa.Table) else list(columns)
    check_columns(present, names, "encoded features")
    n = len(columns[names[0]]) if names else (columns.num_rows if isinstance(columns, pa.Table) else 0)
    c, d = len(spec.categorical), len(spec.dense)
    if out is None:
        out = (np.empty((c, n), np.int64), np.empty((c, n), np.bool_), np.empty((d, n), np.float64))
    key, null, raw = out
    for i, f in enumerate(spec.categorical):
        name = CAT_KEY_PREFIX + f.name
        _copy_rows(columns[name], name, pa.int64(), key[i], null[i])
    for i, f in enumerate(spec.dense):
        name = DENSE_RAW_PREFIX + f.name
        _copy_rows(columns[name], name, pa.float64(), raw[i], None)
    return key, null, raw


def apply_transform(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray], spec: FeatureSpec
) -> dict[str, np.ndarray]:
    """The torch half on the CPU, numpy in and out: `cat` int64 [N, C], `dense` float32 [N, D]."""
    import torch

    from models.transforms import FeatureTransform, from_numpy

    with torch.inference_mode():
        out = FeatureTransform(spec)(*(from_numpy(a) for a in arrays))
    return {name: t.numpy() for name, t in out.items()}


def transform_table(table: pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Feature tensors for a batch: `cat` int64 [N, C] and `dense` float32 [N, D], computed on CPU
    by the same code as on a replica's device (`encode_table` -> `stack_encoded` -> torch)."""
    return apply_transform(stack_encoded(encode_table(table, spec), spec), spec)


def hash_buckets(column: pa.Array | pa.ChunkedArray, buckets: int, name: str = "?") -> np.ndarray:
    """Stable hash of ints or strings into [1, buckets); nulls map to 0. Same result in any process."""
    spec = FeatureSpec(categorical=[CategoricalFeature(name, buckets)])
    check_spec(spec)
    encoded = {CAT_KEY_PREFIX + name: categorical_key_column(column, name)}
    return apply_transform(stack_encoded(encoded, spec), spec)["cat"][:, 0].copy()


def dense_values(column: pa.Array | pa.ChunkedArray, feat: DenseFeature) -> np.ndarray:
    """One dense column through fill -> clip -> log1p -> standardize, as float32."""
    spec = FeatureSpec(dense=[feat])
    encoded = {DENSE_RAW_PREFIX + feat.name: dense_raw_column(column, feat)}
    return apply_transform(stack_encoded(encoded, spec), spec)["dense"][:, 0].copy()


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
            mask = null_mask(col) & (reasons == None)  # noqa: E711
            reasons[mask] = f"null key column {c!r}"
            found = True
    for f in spec.dense:
        if f.on_nonfinite != "reject":
            continue
        x = to_numpy(pc.cast(table.column(f.name), pa.float64()))
        bad = ~np.isfinite(x)
        if bad.any():
            mask = bad & (reasons == None)  # noqa: E711
            reasons[mask] = f"non-finite value in {f.name!r} (spec says reject)"
            found = True
    return reasons if found else None


_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)


def _chunk_hash64(col: pa.Array) -> np.ndarray:
    """One value hash per row of one chunk (uint64), nulls as `_NULL_HASH`. Never concatenates or
    decodes a column into one buffer: a row group with more than 2 GiB of strings arrives as
    several chunks (or with large offsets), and `combine_chunks` of string chunks overflows their
    32-bit offsets."""
    t = col.type
    if pa.types.is_dictionary(t):  # each distinct value hashed once, then gathered by index
        values = _chunk_hash64(col.dictionary)
        if len(values) == 0:
            return np.full(len(col), _NULL_HASH, dtype=np.uint64)
        idx = value_slots(pc.cast(col.indices, pa.int64()), np.int64)
        v = values.take(idx, mode="clip")  # clip: what a null slot holds is unspecified (masked below)
        if col.indices.null_count:
            v[null_mask(col.indices)] = _NULL_HASH
        return v
    # null slots are hashed as whatever they hold, then masked: no `fill_null` (see models.arrays)
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        v = _splitmix64(value_slots(pc.cast(col, pa.int64()), np.int64).view(np.uint64))
    elif is_text_type(t):
        v = _fnv1a_strings(col)
    else:  # dates, decimals, ...: by their text; large offsets, as a chunk's text may pass 2 GiB
        v = _fnv1a_strings(pc.cast(col, pa.large_string()))
    if col.null_count:
        v = v.copy()
        v[null_mask(col)] = _NULL_HASH
    return v


def column_hash64(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`_chunk_hash64` of every chunk, end to end (chunk by chunk: any total size)."""
    if isinstance(col, pa.ChunkedArray):
        parts = [_chunk_hash64(c) for c in col.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return _chunk_hash64(col)


def row_hash64(columns: list[pa.Array | pa.ChunkedArray], seed: int) -> np.ndarray:
    """A 64-bit hash per row over several columns (ints or strings), stable across processes.

    Used to compare the multiset of keys in and out of a run without collecting the keys. A
    value hashes the same whatever its chunking, offsets width (string / large_string / view) or
    dictionary encoding.
    """
    n = len(columns[0]) if columns else 0
    h = np.full(n, np.uint64(seed), dtype=np.uint64)
    for col in columns:
        h *= _FNV_PRIME
        h ^= column_hash64(col)
        _splitmix64_inplace(h)
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
