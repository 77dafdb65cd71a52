"""Key fingerprints, for row reconciliation by key: per partition, the multiset of input keys must
equal the multiset of output keys plus dead-letter keys. A retried block that duplicates rows while
another block is missing keeps the counts equal but changes the key sums, and is caught here. Below
both the stages that write fingerprints into footers and the commit that checks them.

A file's fingerprint is its row count and the sum and the sum of squares of a 64-bit hash of each
row's key (mod 2**64). The files this run writes carry theirs in their footer, computed from the
rows written into them (pipeline/filestats.py); a file without one (an input file, or one
written by an older version) is read by a Ray task per file. Either way the driver handles a few
numbers per file, never the keys."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.storage import map_files

MASK = (1 << 64) - 1
HASH_SEED = 11


@dataclass
class Fingerprint:
    rows: int = 0
    s1: int = 0
    s2: int = 0

    def __add__(self, other: Fingerprint) -> Fingerprint:
        return Fingerprint(self.rows + other.rows, (self.s1 + other.s1) & MASK, (self.s2 + other.s2) & MASK)


def fingerprint_of(table, key_columns: list[str]) -> Fingerprint:
    """The fingerprint of a table's rows (a pyarrow Table holding the key columns)."""
    import numpy as np

    from models.features import row_hash64

    h = row_hash64([table.column(c) for c in key_columns], seed=HASH_SEED)
    # two moments of one 64-bit hash (sum and sum of squares, mod 2**64): one hashing pass per file
    # instead of two; a multiset change slips through only if both sums collide
    s1 = int(h.sum(dtype=np.uint64))
    s2 = int(np.multiply(h, h, out=h).sum(dtype=np.uint64))  # h is ours: squared in place
    return Fingerprint(table.num_rows, s1, s2)


def _file_fingerprint(fs, path: str, key_columns: list[str]) -> tuple[int, int, int]:
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        fp = fingerprint_of(pq.read_table(f, columns=key_columns), key_columns)
    return fp.rows, fp.s1, fp.s2


def fingerprint_files(fs, paths: list[str], key_columns: list[str]) -> list[Fingerprint]:
    """One fingerprint per file, read by parallel Ray tasks (or inline without Ray)."""
    return [Fingerprint(*r) for r in map_files(_file_fingerprint, fs, paths, key_columns)]


def total(fps: list[Fingerprint]) -> Fingerprint:
    out = Fingerprint()
    for fp in fps:
        out = out + fp
    return out
