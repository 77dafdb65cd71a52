"""numpy <-> Arrow without pandas (models/arrays.py): the same values, types and nulls as
pyarrow's own conversions, for plain, sliced, chunked and null-holding arrays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from models.arrays import from_numpy, int_dtype, null_mask, to_numpy

INTS = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


def _cases() -> list[pa.Array | pa.ChunkedArray]:
    out: list[pa.Array | pa.ChunkedArray] = []
    for t in [*INTS, pa.float32(), pa.float64()]:
        out += [
            pa.array([1, 2, 3, 4, 5], t),
            pa.array([1, None, 3, 4, 5], t),
            pa.array([1, None, 3, 4, 5], t).slice(2, 3),  # an offset, no nulls left in view
            pa.array([None, None], t),
            pa.array([], t),
            pa.chunked_array([pa.array([1, 2], t), pa.array([None, 4], t)]),
            pa.chunked_array([], t),
        ]
    out += [
        pa.array([True, False, True] * 7).slice(5, 11),  # a bit offset inside a byte
        pa.array([1.5, float("nan"), None]),  # NaN is a value, None a null
        pa.array([0.5, 1.5], pa.float16()),
        pa.array(["a", None, "c"]),  # not numeric: pyarrow's conversion
        pa.array([True, None]),
        pa.chunked_array([pa.array([True]), pa.array([False, True])]),
    ]
    return out


@pytest.mark.parametrize("col", _cases(), ids=lambda c: f"{c.type}-{len(c)}-{c.null_count}")
def test_to_numpy_and_null_mask_give_what_pyarrow_gives(col):
    want = col.to_numpy() if isinstance(col, pa.ChunkedArray) else col.to_numpy(zero_copy_only=False)
    got = to_numpy(col)
    assert got.dtype == want.dtype
    if got.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        np.testing.assert_array_equal(got, want)  # NaN where NaN
    whole = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    np.testing.assert_array_equal(null_mask(col), whole.is_null().to_numpy(zero_copy_only=False))


@pytest.mark.parametrize(
    "values",
    [
        np.arange(5, dtype=np.int8),
        np.arange(5, dtype=np.uint64),
        np.arange(10, dtype=np.float32)[::3],  # strided: made contiguous
        np.array([1.5, np.nan, -np.inf]),
        np.array([True, False, True, True, False, False, True, False, True]),
        np.zeros(0, dtype=np.float64),
        np.array(["x", "y"]),  # not numeric: pa.array
    ],
    ids=lambda v: f"{v.dtype}-{len(v)}",
)
def test_from_numpy_gives_what_pa_array_gives(values):
    got, want = from_numpy(values), pa.array(values)
    assert got.type == want.type and got.null_count == want.null_count == 0  # NaN stays a value
    np.testing.assert_array_equal(got.to_numpy(zero_copy_only=False), want.to_numpy(zero_copy_only=False))


def test_from_numpy_casts_and_takes_the_nulls_of_like():
    assert from_numpy(np.array([1.0, 2.0]), pa.float32()).equals(pa.array([1.0, 2.0], pa.float32()))
    like = pa.array([7, None, 9, None, 11])
    for lk in (like, like.slice(1, 3), pa.array(["a", None, "c", None, "e"]).dictionary_encode()):
        values = np.arange(len(lk), dtype=np.int64) * 10
        want = pa.array(values, mask=lk.is_null().to_numpy(zero_copy_only=False))
        assert from_numpy(values, like=lk).equals(want)
    no_nulls = pa.array([1, 2])
    assert from_numpy(np.array([5, 6]), like=no_nulls).null_count == 0


def test_int_dtype_is_pyarrows_numpy_type():
    for t in INTS:
        assert int_dtype(t) == np.dtype(t.to_pandas_dtype())


def test_none_of_it_imports_pandas():
    code = """
import sys
import numpy as np, pyarrow as pa
from models.arrays import from_numpy, null_mask, to_numpy
like = pa.concat_arrays([pa.nulls(3, pa.int64()), from_numpy(np.arange(7))])
a = from_numpy(np.arange(10, dtype=np.int64), like=like.slice(1))
b = from_numpy(np.arange(10) % 2 == 0)
assert a.null_count == 2 and b.to_pylist()[:2] == [True, False]
c = pa.chunked_array([a.cast(pa.float64()), a.cast(pa.float64()).slice(3)])
to_numpy(a), to_numpy(b), to_numpy(c), null_mask(c), null_mask(a.slice(1))
print("pandas" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
