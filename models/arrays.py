"""numpy vectors as Arrow arrays, built from their buffers.

Why our own and not `pa.array`: pyarrow's `pa.array`, `pa.scalar` and `to_pandas_dtype` import
pandas first (to tell a pandas Series from a numpy array), and in a fresh replica process that
import came before its first scored batch: 0.13-0.15 s of CPU in each replica, on a path where
the first batch is due 2 s after Ray is up (issue 20). For the vectors the scoring path makes
(numbers and flags) the Arrow array is the numpy buffer itself, so building it directly is also
zero-copy. Anything else (objects, strings, N-D) goes to `pa.array` as before.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def from_numpy(values: np.ndarray, type: pa.DataType | None = None, like: pa.Array | None = None) -> pa.Array:
    """A 1-D numpy array as an Arrow array (numbers zero-copy, bools packed to bits), cast to
    `type` when given; with `like`, null where `like` is null. NaN stays a value, as `pa.array`
    keeps it."""
    if values.ndim != 1 or values.dtype.kind not in "iufb" or values.dtype.byteorder == ">":
        mask = None if like is None or not like.null_count else like.is_null().to_numpy(zero_copy_only=False)
        return pa.array(values, type=type, mask=mask)
    if values.dtype.kind == "b":
        typ, data = pa.bool_(), pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        values = np.ascontiguousarray(values)
        typ, data = pa.from_numpy_dtype(values.dtype), pa.py_buffer(values)
    validity, nulls = _validity_of(like) if like is not None else (None, 0)
    arr = pa.Array.from_buffers(typ, len(values), [validity, data], nulls)
    return arr if type is None or arr.type == type else arr.cast(type)


def _validity_of(like: pa.Array) -> tuple[pa.Buffer | None, int]:
    """`like`'s validity bitmap at offset 0 (its own when it is, else a fresh one) and null count."""
    if not like.null_count:
        return None, 0
    if like.offset == 0 and not pa.types.is_dictionary(like.type) and like.buffers()[0] is not None:
        return like.buffers()[0], like.null_count
    return pc.is_valid(like).buffers()[1], like.null_count


def int_dtype(t: pa.DataType) -> np.dtype:
    """The numpy dtype of an Arrow integer type (what `t.to_pandas_dtype()` gives, without pandas)."""
    return np.dtype(f"{'u' if pa.types.is_unsigned_integer(t) else 'i'}{t.bit_width // 8}")


def to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`col.to_numpy(zero_copy_only=False)` without pandas (see the module's docstring; pyarrow's
    conversion imports it too): numbers without nulls as a view of their buffer, with nulls a
    copy (floats NaN there, integers as float64 with NaN, as pyarrow gives them), bools unpacked.
    Other types, and bools with nulls, go through pyarrow's own conversion."""
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            return to_numpy(col.chunk(0))
        parts = [to_numpy(c) for c in col.chunks]
        return np.concatenate(parts) if parts else to_numpy(pa.nulls(0, col.type))
    t = col.type
    if pa.types.is_boolean(t) and not col.null_count:
        return _bits(col.buffers()[1], col.offset, len(col))
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return col.to_numpy(zero_copy_only=False)
    values = value_slots(col, int_dtype(t) if pa.types.is_integer(t) else np.dtype(f"f{t.bit_width // 8}"))
    if not col.null_count:
        return values
    out = values.astype(np.float64) if values.dtype.kind in "iu" else values.copy()
    out[null_mask(col)] = np.nan
    return out


def value_slots(arr: pa.Array, dtype: np.dtype | type) -> np.ndarray:
    """The values buffer of a fixed-width array as numpy `dtype`, zero-copy: null slots hold
    whatever they hold (callers mask them)."""
    buf = arr.buffers()[1]
    if buf is None or len(arr) == 0:
        return np.zeros(len(arr), dtype=dtype)
    return np.frombuffer(buf, dtype=dtype)[arr.offset : arr.offset + len(arr)]


def null_mask(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`col.is_null()` as a numpy bool array, without pandas."""
    return to_numpy(pc.is_null(col))  # bools without nulls: unpacked from their bitmap


def _bits(buf: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    """`n` bits of an Arrow bitmap from bit `offset`, as numpy bools."""
    if buf is None or n == 0:
        return np.zeros(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(buf, np.uint8), count=offset + n, bitorder="little")
    return bits[offset:].view(bool)
