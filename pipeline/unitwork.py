"""What one unit of work (an input file, a range of its row groups, or small files packed together)
wrote, noted while it is scored, for the attempt record that makes it adoptable by a rerun
(pipeline/run/resume.py).

Why a thread-local note instead of return values: the files are written several calls deep
(the date's or the unit's file buffer, the dead-letter writer inside a stage, the input key
record at the end of a read), and in the local runner by whichever thread scored a slice. The
code that runs a unit wraps each piece of its work in `noting()`; the writers below it call
`note_file` / `note_input_keys` and know nothing of resuming. Outside `noting()` they are no-ops."""

from __future__ import annotations

import contextlib
import posixpath
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()


@dataclass
class UnitNotes:
    """Files written (each {"path", "size", "rows", "keys"}), split by kind by their name, and the
    input key records made ({"files", "row_groups", "keys"}), while noting."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    input_keys: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: UnitNotes) -> None:
        self.outputs += other.outputs
        self.dead_letters += other.dead_letters
        self.input_keys += other.input_keys


@contextlib.contextmanager
def noting(into: UnitNotes | None = None) -> Iterator[UnitNotes]:
    """Collect what this thread writes inside the block (nested blocks note into the inner one)."""
    notes = into if into is not None else UnitNotes()
    before = getattr(_local, "notes", None)
    _local.notes = notes
    try:
        yield notes
    finally:
        _local.notes = before


def note_file(path: str, size: int, rows: int, keys: dict[str, Any] | None) -> None:
    """A Parquet file is written and closed: `path` (file-system path), its bytes, rows and key
    fingerprint ({"rows", "s1", "s2", ...} as in its footer, None without one)."""
    notes = getattr(_local, "notes", None)
    if notes is None:
        return
    entry = {"path": path, "size": int(size), "rows": int(rows), "keys": keys}
    (notes.dead_letters if posixpath.basename(path).startswith("dl-") else notes.outputs).append(entry)


def note_input_keys(files: list[str], row_groups: list[int] | None, keys: dict[str, Any]) -> None:
    """An input key record was made for `files` (of row groups [start, stop, of] of one file)."""
    notes = getattr(_local, "notes", None)
    if notes is not None:
        notes.input_keys.append({"files": sorted(files), "row_groups": row_groups, "keys": keys})
