"""Unit tests for models.features: hashing, dense transforms, transform_table, stats, spec round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from feature_parity import ref_splitmix64

from models.features import (
    CategoricalFeature,
    DenseFeature,
    FeatureError,
    FeatureSpec,
    dense_values,
    fit_dense_stats,
    hash_buckets,
    transform_table,
)

# ---------------------------------------------------------------------------------------------
# hash_buckets
# ---------------------------------------------------------------------------------------------

PINNED_INTS = [0, 1, 2, 3, -5, 2**30, 123456789, 2**62]
PINNED_STRS = ["", "a", "bb", "hello world", "ä", "user_42"]

# Computed once with the FNV-1a (strings) + splitmix64 hash. A change of the hash function changes
# every bucket id a trained model knows, so it must fail these tests (and needs a retrained model).
PINNED = {
    1000: (
        [1, 374, 590, 705, 760, 434, 810, 370],
        [85, 149, 542, 348, 760, 403],
    ),
    2**31 - 1: (
        [1, 1783848542, 695465717, 1549903017, 310160983, 2019816308, 1806834879, 141308434],
        [2120106064, 1394022389, 1002314468, 703296150, 643901026, 1922675542],
    ),
}

_M64 = (1 << 64) - 1


def _ref_fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _M64
    return h


def _ref_bucket_str(value: str | None, buckets: int) -> int:
    if value is None:
        return 0
    return ref_splitmix64(_ref_fnv1a(value.encode("utf-8"))) % (buckets - 1) + 1


def _ref_bucket_int(value: int | None, buckets: int) -> int:
    if value is None:
        return 0
    return ref_splitmix64(value & _M64) % (buckets - 1) + 1


@pytest.mark.parametrize("buckets", sorted(PINNED))
def test_hash_buckets_pinned_values(buckets):
    want_ints, want_strs = PINNED[buckets]
    assert hash_buckets(pa.array(PINNED_INTS, pa.int64()), buckets).tolist() == want_ints
    assert hash_buckets(pa.array(PINNED_STRS, pa.string()), buckets).tolist() == want_strs


def test_hash_buckets_matches_scalar_reference():
    """The vectorized hash equals a plain per-value implementation (variable lengths, unicode)."""
    rng = np.random.default_rng(0)
    alphabet = list("abcxyz0123456789_-äé€ 😀")
    strs = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 20)))) for _ in range(200)] + [None]
    ints = [int(v) for v in rng.integers(-(2**62), 2**62, size=200)] + [None, 0, -1]
    buckets = 97
    assert hash_buckets(pa.array(strs), buckets).tolist() == [_ref_bucket_str(s, buckets) for s in strs]
    assert hash_buckets(pa.array(ints, pa.int64()), buckets).tolist() == [
        _ref_bucket_int(v, buckets) for v in ints
    ]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.binary(), pa.string_view()])
def test_equal_length_values_hash_as_the_scalar_reference(kind):
    """Values all of one length take the strided path: same hashes, also for a slice (offsets
    not starting at 0) and for multi-byte characters."""
    values = [f"2026-10-01-{i:06d}" for i in range(300)] + ["ä€-00000000000"]
    assert {len(v.encode()) for v in values} == {17}
    arr = pa.array(values, pa.string()).cast(kind)
    for part, want in ((arr, values), (arr.slice(7, 200), values[7:207])):
        got = hash_buckets(part, 1 << 20).tolist()
        assert got == [_ref_bucket_str(v, 1 << 20) for v in want]


def test_hash_buckets_deterministic_across_calls():
    arr = pa.array([f"user_{i}" for i in range(500)])
    a = hash_buckets(arr, 1 << 20)
    b = hash_buckets(pa.array([f"user_{i}" for i in range(500)]), 1 << 20)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    # and it actually spreads values (not a constant function)
    assert len(np.unique(a)) > 490


@pytest.mark.parametrize(
    "arr",
    [
        pa.array([None, 5, None, 7], pa.int64()),
        pa.array([None, "x", None, "y"], pa.string()),
        pa.array([None, "x", None, "y"], pa.large_string()),
    ],
    ids=["int", "string", "large_string"],
)
def test_hash_buckets_null_goes_to_zero(arr):
    out = hash_buckets(arr, 10)
    assert out[0] == 0 and out[2] == 0
    assert out[1] >= 1 and out[3] >= 1


def test_hash_buckets_empty_string_and_zero_are_not_null():
    assert hash_buckets(pa.array(["", None]), 1000).tolist() == [85, 0]
    assert hash_buckets(pa.array([0, None], pa.int64()), 1000).tolist() == [1, 0]


@pytest.mark.parametrize("buckets", [2, 3, 10, 1000])
def test_hash_buckets_range(buckets):
    ints = pa.array(list(range(-500, 500)), pa.int64())
    strs = pa.array([f"v{i}" for i in range(1000)])
    for arr in (ints, strs):
        out = hash_buckets(arr, buckets)
        assert out.min() >= 1
        assert out.max() <= buckets - 1
        if buckets <= 10:
            # every non-null bucket is used by 1000 distinct values
            assert set(out.tolist()) == set(range(1, buckets))


def test_hash_buckets_two_buckets_is_all_ones():
    assert hash_buckets(pa.array([1, 2, None], pa.int64()), 2).tolist() == [1, 1, 0]


@pytest.mark.parametrize("buckets", [1, 0, -3])
def test_hash_buckets_rejects_too_few_buckets(buckets):
    with pytest.raises(FeatureError, match=r"'user_id'.*buckets must be >= 2"):
        hash_buckets(pa.array([1], pa.int64()), buckets, "user_id")


@pytest.mark.parametrize("int_type", [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint32()])
def test_hash_buckets_integer_widths_agree(int_type):
    values = [0, 1, 7, 100, None]
    want = hash_buckets(pa.array(values, pa.int64()), 1000)
    np.testing.assert_array_equal(hash_buckets(pa.array(values, int_type), 1000), want)


STR_VALUES = ["alpha", None, "", "beta", "γάμμα", "delta-long-value-with-many-bytes", None, "z"]


def _expected_str_buckets(buckets=1009):
    return hash_buckets(pa.array(STR_VALUES, pa.string()), buckets)


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string(), pa.binary()])
def test_hash_buckets_string_types_agree(typ):
    values = STR_VALUES if typ != pa.binary() else [None if v is None else v.encode() for v in STR_VALUES]
    np.testing.assert_array_equal(hash_buckets(pa.array(values, typ), 1009), _expected_str_buckets())


def test_hash_buckets_dictionary_encoded_agrees():
    arr = pa.array(STR_VALUES).dictionary_encode()
    np.testing.assert_array_equal(hash_buckets(arr, 1009), _expected_str_buckets())


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_hash_buckets_chunked_array_several_chunks(typ):
    chunked = pa.chunked_array(
        [pa.array(STR_VALUES[:2], typ), pa.array(STR_VALUES[2:5], typ), pa.array(STR_VALUES[5:], typ)]
    )
    assert chunked.num_chunks == 3
    np.testing.assert_array_equal(hash_buckets(chunked, 1009), _expected_str_buckets())


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_hash_buckets_sliced_string_array_with_offset(typ):
    padded = pa.array(["pad0", None, "pad-two", *STR_VALUES, "tail"], typ)
    sliced = padded.slice(3, len(STR_VALUES))
    assert sliced.offset == 3
    np.testing.assert_array_equal(hash_buckets(sliced, 1009), _expected_str_buckets())


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_hash_buckets_chunked_of_sliced_chunks(typ):
    a = pa.array(["junk", *STR_VALUES[:4]], typ).slice(1)
    b = pa.array(["x", "yy", *STR_VALUES[4:], "after"], typ).slice(2, len(STR_VALUES) - 4)
    assert a.offset == 1 and b.offset == 2
    chunked = pa.chunked_array([a, b])
    np.testing.assert_array_equal(hash_buckets(chunked, 1009), _expected_str_buckets())


def test_hash_buckets_sliced_and_chunked_ints():
    values = [3, None, -9, 2**40, 0, 17]
    want = hash_buckets(pa.array(values, pa.int64()), 1009)
    sliced = pa.array([11, None, *values, 5], pa.int64()).slice(2, len(values))
    assert sliced.offset == 2
    np.testing.assert_array_equal(hash_buckets(sliced, 1009), want)
    chunked = pa.chunked_array([pa.array(values[:3], pa.int64()), pa.array(values[3:], pa.int64())])
    np.testing.assert_array_equal(hash_buckets(chunked, 1009), want)


def test_hash_buckets_empty_and_all_null():
    assert hash_buckets(pa.array([], pa.string()), 10).tolist() == []
    assert hash_buckets(pa.array([None, None], pa.string()), 10).tolist() == [0, 0]
    assert hash_buckets(pa.array([None, None], pa.int64()), 10).tolist() == [0, 0]


@pytest.mark.parametrize(
    "arr",
    [pa.array([1.5, 2.0]), pa.array([True, False]), pa.array([[1], [2]])],
    ids=["float", "bool", "list"],
)
def test_hash_buckets_wrong_type_names_column(arr):
    with pytest.raises(FeatureError, match=r"categorical feature 'item_category'.*integer or string"):
        hash_buckets(arr, 10, "item_category")


# ---------------------------------------------------------------------------------------------
# dense_values
# ---------------------------------------------------------------------------------------------


def test_dense_values_fill_null_nan_inf():
    col = pa.array([None, float("nan"), float("inf"), float("-inf"), 2.5])
    out = dense_values(col, DenseFeature("x", fill=-7.0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([-7.0, -7.0, -7.0, -7.0, 2.5], np.float32))


def test_dense_values_integer_nulls_filled():
    out = dense_values(pa.array([1, None, 3], pa.int64()), DenseFeature("x", fill=9.0))
    np.testing.assert_array_equal(out, np.array([1, 9, 3], np.float32))


def test_dense_values_boolean():
    out = dense_values(pa.array([True, False, None]), DenseFeature("x", fill=0.5))
    np.testing.assert_array_equal(out, np.array([1.0, 0.0, 0.5], np.float32))


def test_dense_values_clip_one_sided():
    col = pa.array([-5.0, 1.0, 200.0])
    np.testing.assert_array_equal(dense_values(col, DenseFeature("x", clip_max=10.0)), [-5.0, 1.0, 10.0])
    np.testing.assert_array_equal(dense_values(col, DenseFeature("x", clip_min=0.0)), [0.0, 1.0, 200.0])
    np.testing.assert_array_equal(
        dense_values(col, DenseFeature("x", clip_min=0.0, clip_max=10.0)), [0.0, 1.0, 10.0]
    )


def test_dense_values_log1p_negative_counts_as_zero():
    out = dense_values(pa.array([-3.0, 0.0, math.e - 1]), DenseFeature("x", log1p=True))
    np.testing.assert_allclose(out, [0.0, 0.0, 1.0], rtol=1e-6)


def test_dense_values_standardize():
    out = dense_values(pa.array([1.0, 3.0, 5.0]), DenseFeature("x", mean=3.0, std=2.0))
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0])


def test_dense_values_zero_std_means_no_scaling():
    out = dense_values(pa.array([1.0, 3.0]), DenseFeature("x", mean=1.0, std=0.0))
    np.testing.assert_allclose(out, [0.0, 2.0])


def test_dense_values_order_fill_clip_log1p_standardize():
    """fill -> clip -> log1p -> standardize, with hand-computed numbers."""
    feat = DenseFeature("x", fill=5.0, clip_min=-1.0, clip_max=100.0, log1p=True, mean=1.0, std=2.0)
    col = pa.array([None, float("nan"), float("inf"), -3.0, 0.0, 1000.0, 3.0])
    want = [
        (math.log1p(5.0) - 1.0) / 2.0,  # null -> fill 5 (fill happens before clip and log1p)
        (math.log1p(5.0) - 1.0) / 2.0,  # NaN -> 5
        (math.log1p(5.0) - 1.0) / 2.0,  # +inf -> 5 (not clipped to 100)
        (0.0 - 1.0) / 2.0,  # -3 -> clip -1 -> log1p(max(-1, 0)) = 0
        (0.0 - 1.0) / 2.0,  # 0 -> log1p 0
        (math.log1p(100.0) - 1.0) / 2.0,  # clipped to 100 before log1p
        (math.log1p(3.0) - 1.0) / 2.0,
    ]
    np.testing.assert_allclose(dense_values(col, feat), np.array(want, np.float32), rtol=1e-6)


def test_dense_values_chunked_and_sliced():
    feat = DenseFeature("x", fill=-1.0, mean=0.5, std=0.5)
    want = dense_values(pa.array([2.0, None, 4.0]), feat)
    sliced = pa.array([None, 9.0, 2.0, None, 4.0]).slice(2)
    chunked = pa.chunked_array([pa.array([2.0]), pa.array([None, 4.0])])
    np.testing.assert_array_equal(dense_values(sliced, feat), want)
    np.testing.assert_array_equal(dense_values(chunked, feat), want)
    np.testing.assert_allclose(want, [3.0, -3.0, 7.0])


def test_dense_values_wrong_type_names_column():
    with pytest.raises(FeatureError, match=r"dense feature 'price'.*numeric"):
        dense_values(pa.array(["1.0"]), DenseFeature("price"))


# ---------------------------------------------------------------------------------------------
# transform_table / fit_dense_stats
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def spec() -> FeatureSpec:
    return FeatureSpec(
        categorical=[CategoricalFeature("user_id", 101), CategoricalFeature("item", 13)],
        dense=[
            DenseFeature("price", log1p=True, clip_min=0.0),
            DenseFeature("age", fill=30.0, clip_max=90.0),
            DenseFeature("clicks", mean=1.0, std=4.0),
        ],
    )


@pytest.fixture
def table() -> pa.Table:
    rng = np.random.default_rng(1)
    n = 257
    price = rng.lognormal(2.0, 1.0, n)
    price[::17] = np.nan
    age = rng.integers(15, 100, n).astype(float)
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "user_id": pa.array(
                [None if i % 11 == 0 else int(v) for i, v in enumerate(rng.integers(0, 1e6, n))]
            ),
            "item": pa.array([None if i % 7 == 0 else f"item-{i % 40}" for i in range(n)]),
            "price": pa.array(price),
            "age": pa.array([None if i % 5 == 0 else v for i, v in enumerate(age)]),
            "clicks": pa.array(rng.poisson(3, n), pa.int32()),
        }
    )


def test_transform_table_shapes_and_dtypes(table, spec):
    feats = transform_table(table, spec)
    assert set(feats) == {"cat", "dense"}
    assert feats["cat"].shape == (table.num_rows, 2)
    assert feats["cat"].dtype == np.int64
    assert feats["dense"].shape == (table.num_rows, 3)
    assert feats["dense"].dtype == np.float32
    assert np.isfinite(feats["dense"]).all()


def test_transform_table_columns_equal_per_column_functions(table, spec):
    feats = transform_table(table, spec)
    np.testing.assert_array_equal(feats["cat"][:, 0], hash_buckets(table.column("user_id"), 101))
    np.testing.assert_array_equal(feats["cat"][:, 1], hash_buckets(table.column("item"), 13))
    for i, f in enumerate(spec.dense):
        np.testing.assert_array_equal(feats["dense"][:, i], dense_values(table.column(f.name), f))
    assert (feats["cat"][::11, 0] == 0).all()  # null user ids
    assert (feats["cat"][:, 0][np.arange(table.num_rows) % 11 != 0] >= 1).all()


def test_transform_table_ignores_column_order_and_extras(table, spec):
    shuffled = table.select(["clicks", "item", "event_id", "age", "price", "user_id"])
    a, b = transform_table(table, spec), transform_table(shuffled, spec)
    np.testing.assert_array_equal(a["cat"], b["cat"])
    np.testing.assert_array_equal(a["dense"], b["dense"])


def test_transform_table_empty_spec_parts(table):
    feats = transform_table(table, FeatureSpec(categorical=[CategoricalFeature("item", 5)]))
    assert feats["cat"].shape == (table.num_rows, 1)
    assert feats["dense"].shape == (table.num_rows, 0)


def test_transform_table_missing_column_names_missing_and_present(table, spec):
    t = table.drop_columns(["price", "item"])
    with pytest.raises(FeatureError) as ei:
        transform_table(t, spec)
    msg = str(ei.value)
    assert "missing columns ['item', 'price']" in msg
    assert "present columns: ['age', 'clicks', 'event_id', 'user_id']" in msg


def test_transform_table_wrong_type_names_column(table, spec):
    t = table.set_column(table.schema.get_field_index("item"), "item", pa.array([1.0] * table.num_rows))
    with pytest.raises(FeatureError, match="'item'"):
        transform_table(t, spec)


def test_fit_dense_stats_standardizes(table, spec):
    fitted = fit_dense_stats(table, spec)
    dense = transform_table(table, fitted)["dense"].astype(np.float64)
    np.testing.assert_allclose(dense.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(dense.std(axis=0), 1.0, atol=1e-5)
    # the measured statistics are not the defaults, and the input spec is untouched
    assert all(f.mean != 0.0 and f.std != 1.0 for f in fitted.dense)
    assert [(f.mean, f.std) for f in spec.dense] == [(0.0, 1.0), (0.0, 1.0), (1.0, 4.0)]
    assert fitted.categorical == spec.categorical
    # measured after fill/clip/log1p: price mean is the mean of log1p(clipped, filled) prices
    price = np.log1p(np.maximum(np.nan_to_num(table.column("price").to_numpy(), nan=0.0), 0.0))
    assert fitted.dense[0].mean == pytest.approx(price.mean(), rel=1e-6)


def test_fit_dense_stats_constant_column_keeps_std_one():
    t = pa.table({"x": pa.array([4.0, 4.0, 4.0])})
    fitted = fit_dense_stats(t, FeatureSpec(dense=[DenseFeature("x")]))
    assert fitted.dense[0].mean == pytest.approx(4.0)
    assert fitted.dense[0].std == 1.0


# ---------------------------------------------------------------------------------------------
# FeatureSpec serialization
# ---------------------------------------------------------------------------------------------


def test_feature_spec_round_trip(spec):
    spec.dense[0].mean, spec.dense[0].std = 1.25, 0.5
    d = spec.to_dict()
    assert d["categorical"][0] == {"name": "user_id", "buckets": 101}
    back = FeatureSpec.from_dict(d)
    assert back == spec
    assert FeatureSpec.from_dict(json.loads(spec.to_json())) == spec
    assert back.columns == ["user_id", "item", "price", "age", "clicks"]


def test_feature_spec_from_dict_defaults():
    s = FeatureSpec.from_dict({"dense": [{"name": "x"}]})
    assert s.categorical == []
    assert s.dense == [DenseFeature("x")]


def test_feature_spec_unknown_top_level_key():
    with pytest.raises(FeatureError, match=r"unknown keys \['embeddings'\]"):
        FeatureSpec.from_dict({"categorical": [], "embeddings": []})


def test_feature_spec_unknown_nested_key():
    with pytest.raises(FeatureError, match="bucket_count"):
        FeatureSpec.from_dict({"categorical": [{"name": "a", "bucket_count": 3}]})


def test_feature_spec_config_dump_loads_as_feature_spec():
    """The config's feature section (pydantic) must map 1:1 onto FeatureSpec (ModelSource relies on it)."""
    from pipeline.config import FeatureSpecConfig

    cfg = FeatureSpecConfig.model_validate(
        {
            "categorical": [{"name": "u", "buckets": 10}],
            "dense": [
                {"name": "p", "fill": 1.0, "clip_min": 0, "clip_max": 5, "log1p": True, "mean": 2, "std": 3}
            ],
        }
    )
    spec = FeatureSpec.from_dict(cfg.model_dump())
    assert spec == FeatureSpec(
        [CategoricalFeature("u", 10)],
        [DenseFeature("p", fill=1.0, clip_min=0.0, clip_max=5.0, log1p=True, mean=2.0, std=3.0)],
    )
