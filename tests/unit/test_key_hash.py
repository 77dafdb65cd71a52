"""The key fingerprint over any string size: a row group with more than 2 GiB of key strings
arrives as several chunks (or with 64-bit offsets), and hashing must neither concatenate them
(32-bit offsets overflow) nor hash them differently from the same keys in one small chunk."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from models.features import row_hash64
from pipeline.keys import HASH_SEED, Fingerprint, fingerprint_of

ROWS_PER_CHUNK = 1 << 16
VALUE_BYTES = 1024  # 64 MiB of strings per chunk


def _big_chunk() -> pa.Array:
    """64 MiB of distinct 1 KiB strings, built from numpy without a Python string per row."""
    rows = np.full((ROWS_PER_CHUNK, VALUE_BYTES), ord("x"), dtype=np.uint8)
    digits = np.arange(ROWS_PER_CHUNK, dtype=np.uint64)
    for j in range(8):  # the row number in the first 8 bytes: every value distinct
        rows[:, j] = (digits >> np.uint64(8 * j)).astype(np.uint8) | 0x40
    offsets = np.arange(0, (ROWS_PER_CHUNK + 1) * VALUE_BYTES, VALUE_BYTES, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), ROWS_PER_CHUNK, [None, pa.py_buffer(offsets), pa.py_buffer(rows.reshape(-1))]
    )


@pytest.mark.slow  # hashes 2 GiB of bytes: 10-30 s on 2 CPUs, though it holds only ~100 MB
def test_more_than_2_gib_of_strings_in_one_column_hash_chunk_by_chunk():
    """33 chunks of 64 MiB (2.06 GiB in all) that share one buffer, so the test holds 64 MiB:
    combining them overflows 32-bit offsets (the failure the issue saw); hashing them must not."""
    chunk = _big_chunk()
    chunks = 33
    col = pa.chunked_array([chunk] * chunks)
    assert col.nbytes > 2**31
    with pytest.raises(pa.ArrowInvalid):
        col.combine_chunks()  # what the fingerprint used to do
    fp = fingerprint_of(pa.table({"k": col}), ["k"])
    one = fingerprint_of(pa.table({"k": chunk}), ["k"])
    total = Fingerprint()
    for _ in range(chunks):
        total = total + one
    assert fp == total


def test_chunking_and_offset_width_do_not_change_a_keys_hash():
    keys = [f"user-{i:05d}-{'z' * (i % 7)}" if i % 11 else None for i in range(3000)]
    plain = pa.array(keys, pa.string())
    want = row_hash64([plain], seed=HASH_SEED)
    many = pa.chunked_array([plain.slice(i, 100) for i in range(0, 3000, 100)])
    large = pa.array(keys, pa.large_string())
    large_chunks = pa.chunked_array([large.slice(i, 700) for i in range(0, 3000, 700)])
    view = pa.array(keys, pa.string_view())
    encoded = pa.chunked_array([plain.slice(i, 1000).dictionary_encode() for i in range(0, 3000, 1000)])
    for col in (many, large, large_chunks, view, encoded):
        assert np.array_equal(row_hash64([col], seed=HASH_SEED), want), col.type


def test_a_null_inside_a_dictionary_hashes_as_a_null():
    values = pa.array(["a", None, "b"])
    indices = pa.array([0, 1, None, 2, 1], pa.int32())
    encoded = pa.DictionaryArray.from_arrays(indices, values)
    decoded = pa.array(["a", None, None, "b", None])
    assert np.array_equal(row_hash64([encoded], seed=3), row_hash64([decoded], seed=3))


def test_keys_of_other_types_hash_by_their_text_with_large_offsets():
    dates = pa.chunked_array([pa.array([dt.date(2026, 10, 1), None], pa.date32())] * 3)
    text = pa.array(["2026-10-01", None] * 3)
    assert np.array_equal(row_hash64([dates], seed=1), row_hash64([text], seed=1))


def test_row_hash64_of_ints_equals_a_per_value_reference_past_one_block():
    """The in-place, block-wise splitmix64 gives the values of the plain formula: fingerprints in
    footers and attempt records written by earlier versions stay comparable."""
    from feature_parity import ref_splitmix64

    mask = (1 << 64) - 1
    values = np.random.default_rng(3).integers(-(2**62), 2**62, 70_000)  # three blocks of 32,768
    start = (HASH_SEED * 0x100000001B3) & mask
    want = [ref_splitmix64(start ^ ref_splitmix64(int(v) & mask)) for v in values]
    assert row_hash64([pa.array(values)], seed=HASH_SEED).tolist() == want
