"""Parity of the torch feature transforms with the numpy ones they replaced.

`hash_buckets`, `dense_values` and `transform_table` below are a frozen copy of the numpy
implementation (commit ad1dbaa, models/features.py), kept only as the reference the parity tests
(tests/unit/test_transforms.py, tests/gpu/test_transforms_cuda.py) compare the torch path with;
batchscore does not use them. The case builders make the awkward inputs both tiers check.

Tolerance for the float outputs: at most 1 unit in the last place of float32. Both paths do the
same float64 operations in the same order (fill, clip, max(x, 0), subtract, divide: exact IEEE
results) and round to float32 once; only log1p comes from different math libraries (glibc via
numpy, SLEEF in torch on CPU, CUDA's libdevice), each within 1-2 float64 ulps, which can move the
final float32 rounding by at most one step. The bucket ids are integers: bit-exact.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.features import (
    CategoricalFeature,
    DenseFeature,
    FeatureError,
    FeatureSpec,
    is_numeric_type,
    is_text_type,
)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


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


M64 = (1 << 64) - 1


def ref_splitmix64(x: int) -> int:
    """splitmix64's finalizer on a Python int: the reference both implementations are checked against."""
    x &= M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    x ^= x >> 31
    return x


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


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------


def float32_ulp_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between float32 arrays (0.0 and -0.0 equal; inf is one past max)."""
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert not np.isnan(a).any() and not np.isnan(b).any()

    def ordered(x: np.ndarray) -> np.ndarray:
        i = x.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(ordered(a) - ordered(b))


def assert_dense_parity(got: np.ndarray, want: np.ndarray, what: str = "dense") -> None:
    """Equal within float32 rounding: at most 1 ulp (see the module docstring for why)."""
    diff = float32_ulp_diff(got, want)
    worst = int(diff.max()) if diff.size else 0
    assert worst <= 1, (
        f"{what}: {int((diff > 1).sum())} values differ by more than 1 float32 ulp (max {worst})"
    )


# ---------------------------------------------------------------------------------------------
# awkward inputs
# ---------------------------------------------------------------------------------------------

INT64_EDGES = [0, 1, -1, 2, -2, 2**31, -(2**31), 2**53 + 1, 2**62, -(2**62), 2**63 - 1, -(2**63)]
# Bucket counts: tiny, prime, the demo's, 2**31-1, and moduli above 2**62 where an unsigned
# remainder corrected by 2**64 mod m could overflow if done carelessly; 2**63 is the largest allowed.
BUCKETS = [2, 3, 97, 1_000_003, 2**31 - 1, 2**62 + 7, 2**63]


def _strings(rng: np.random.Generator, n: int, null_every: int = 7) -> list[str | None]:
    alphabet = list("abcxyz0123456789_-äé€ 😀")
    out: list[str | None] = []
    for i in range(n):
        if i % null_every == 3:
            out.append(None)
        elif i % 29 == 5:
            out.append("")
        elif i % 31 == 6:
            out.append("long-" + "x" * int(rng.integers(100, 300)))
        else:
            out.append("".join(rng.choice(alphabet, size=int(rng.integers(1, 24)))))
    return out


@functools.cache
def categorical_cases(n: int = 3000, seed: int = 0) -> dict[str, pa.Array | pa.ChunkedArray]:
    """Categorical columns of every kind the transform takes, with nulls and edge values."""
    rng = np.random.default_rng(seed)
    ints = [int(v) for v in rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)]
    ints[: len(INT64_EDGES)] = INT64_EDGES
    int_nulls = [None if i % 11 == 4 else v for i, v in enumerate(ints)]
    strs = _strings(rng, n)
    low = [None if i % 13 == 0 else ["ios", "android", "web", "tv", ""][i % 5] for i in range(20_000)]
    many_small = rng.integers(-128, 128, n)
    cases: dict[str, pa.Array | pa.ChunkedArray] = {
        "int64": pa.array(int_nulls, pa.int64()),
        "int8": pa.array([None if i % 5 == 0 else int(v) for i, v in enumerate(many_small)], pa.int8()),
        "int16": pa.array(rng.integers(-(2**15), 2**15, n), pa.int16()),
        "int32": pa.array(
            [None if i % 9 == 0 else int(v) for i, v in enumerate(rng.integers(-(2**31), 2**31, n))],
            pa.int32(),
        ),
        "uint8": pa.array(rng.integers(0, 256, n), pa.uint8()),
        "uint32": pa.array(rng.integers(0, 2**32, n, dtype=np.uint64), pa.uint32()),
        # values >= 2**63: negative once read as int64, the case the unsigned remainder corrects
        "uint64": pa.array(
            [
                None if i % 17 == 0 else int(v)
                for i, v in enumerate(rng.integers(0, 2**64, n, dtype=np.uint64))
            ],
            pa.uint64(),
        ),
        "string": pa.array(strs, pa.string()),
        "large_string": pa.array(strs, pa.large_string()),
        "binary": pa.array([None if s is None else s.encode() for s in strs], pa.binary()),
        "large_binary": pa.array([None if s is None else s.encode() for s in strs], pa.large_binary()),
        "string_view": pa.array(strs, pa.string()).cast(pa.string_view()),
        "dictionary": pa.array(strs).dictionary_encode(),
        "dictionary_int8_indices": pa.DictionaryArray.from_arrays(
            pa.array([None if i % 6 == 0 else i % 5 for i in range(n)], pa.int8()),
            pa.array(["a", "bb", "", "é", "x" * 40]),
        ),
        "dictionary_null_in_values": pa.DictionaryArray.from_arrays(
            pa.array([i % 4 for i in range(n)], pa.int32()), pa.array(["p", None, "q", "r"])
        ),
        "dictionary_of_ints": pa.array(int_nulls, pa.int64()).dictionary_encode(),
        "low_cardinality_string": pa.array(low, pa.string()),  # long enough for the dictionary route
        "low_cardinality_large_string": pa.array(low, pa.large_string()),
        "chunked_sliced_string": pa.chunked_array(
            [
                pa.array(["pad", *strs[: n // 3]], pa.string()).slice(1),
                pa.array(strs[n // 3 :] + ["z"], pa.string()).slice(0, n - n // 3),
            ]
        ),
        "chunked_ints_with_empty_chunk": pa.chunked_array(
            [
                pa.array(int_nulls[:10], pa.int64()),
                pa.array([], pa.int64()),
                pa.array(int_nulls[10:], pa.int64()),
            ]
        ),
        "sliced_int": pa.array([7, None, *int_nulls, 9], pa.int64()).slice(2, n),
        "all_null_string": pa.array([None] * 50, pa.string()),
        "all_null_int": pa.array([None] * 50, pa.int64()),
        "empty_string": pa.array([], pa.string()),
        "empty_int": pa.array([], pa.int64()),
        "empty_dictionary": pa.array([], pa.string()).dictionary_encode(),
    }
    return cases


DENSE_EDGES = [
    None,
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    0.0,
    -1.0,
    -1e-300,
    5e-324,
    1e-8,
    0.5,
    1.0,
    2.5,
    89.999,
    90.0,
    90.001,
    1e6,
    1e15,
    1e300,
    -1e300,
    2.0**53 + 1,
]


@functools.cache
def dense_cases(n: int = 3000, seed: int = 0) -> dict[str, pa.Array | pa.ChunkedArray]:
    """Numeric columns with nulls, NaN, +-inf, values beyond any clip range and negatives."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(2.0, 2.0, n) * np.where(rng.random(n) < 0.3, -1.0, 1.0)
    values: list[float | None] = [float(v) for v in x]
    values[: len(DENSE_EDGES)] = DENSE_EDGES
    values = [None if i % 13 == 12 else v for i, v in enumerate(values)]
    # within +-2**53: both paths cast with pyarrow's safe cast, which refuses larger integers
    big_ints = [None if i % 10 == 0 else int(v) for i, v in enumerate(rng.integers(-(2**53), 2**53, n))]
    return {
        "float64": pa.array(values, pa.float64()),
        "float32": pa.array(values, pa.float32()),
        "int64": pa.array(big_ints, pa.int64()),
        "int32": pa.array(rng.integers(-1000, 1000, n), pa.int32()),
        "bool": pa.array([None if i % 7 == 0 else bool(i % 2) for i in range(n)]),
        "decimal": pa.array(
            [None if i % 8 == 0 else round(float(v), 3) for i, v in enumerate(rng.normal(50, 30, n))]
        ).cast(pa.decimal128(12, 3)),
        "chunked_sliced": pa.chunked_array([pa.array([1.0, *values[:100]]).slice(1), pa.array(values[100:])]),
        "all_null": pa.array([None] * 40, pa.float64()),
        "empty": pa.array([], pa.float64()),
    }


# Every combination the spec allows: fill, one- and two-sided clips (also crossed), log1p of
# negatives, standardization with zero and negative std (-> no scaling).
DENSE_FEATURES = [
    DenseFeature("x"),
    DenseFeature("x", fill=-7.5, mean=1.25, std=3.0),
    DenseFeature("x", clip_min=0.0, log1p=True, mean=3.02, std=0.98),
    DenseFeature("x", clip_min=0.0, clip_max=90.0, mean=12.0, std=20.0),
    DenseFeature("x", log1p=True),
    DenseFeature("x", fill=0.02, clip_min=0.0, clip_max=1.0, mean=0.03, std=0.01),
    DenseFeature("x", fill=3.5, clip_min=-1.0, clip_max=100.0, log1p=True, mean=1.0, std=2.0),
    DenseFeature("x", clip_max=365.0, log1p=True, mean=1.5, std=0.0),
    DenseFeature("x", clip_min=5.0, clip_max=3.0, mean=-2.0, std=-1.0),
    DenseFeature("x", fill=1e300, mean=1e-3, std=1e-6),
]


def mixed_table(n: int = 3000, seed: int = 0, views: bool = False) -> tuple[pa.Table, FeatureSpec]:
    """One table holding the cases above (equal lengths), and a spec over all of its columns.
    `views`: with the string_view column, which the numpy reference cannot hash."""
    cats = {
        k: v for k, v in categorical_cases(n, seed).items() if len(v) == n and (views or k != "string_view")
    }
    dense = {k: v for k, v in dense_cases(n, seed).items() if len(v) == n}
    cols = {f"c_{k}": v for k, v in cats.items()} | {f"d_{k}": v for k, v in dense.items()}
    spec = FeatureSpec(
        categorical=[CategoricalFeature(f"c_{k}", BUCKETS[i % len(BUCKETS)]) for i, k in enumerate(cats)],
        dense=[replace(DENSE_FEATURES[i % len(DENSE_FEATURES)], name=f"d_{k}") for i, k in enumerate(dense)],
    )
    return pa.table(cols), spec
