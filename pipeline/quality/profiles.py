"""Profiles of a run's prediction files, per output column (a head; an embedding by its vectors' L2
norms, models.outputs.profiled_values). Each file's footer holds the summary of its columns
(models.scoreprofile's Partial, written with the file: pipeline/filestats.py), so the driver
merges a few hundred numbers per file and column, read from footers. A file without them is read by
a Ray task (its output columns only)."""

from __future__ import annotations

import logging

from models.scoreprofile import Partial, merge, partial_of
from pipeline.storage import Location, map_files
from pipeline.tablefiles import TableFile, run_files

log = logging.getLogger("batchscore")


def profile_partitions(
    table: Location,
    col: str,
    dates: list[str],
    columns: list[str] | str,
    run_id: str,
    attempt: str = "",
    adopted: dict[str, list[TableFile]] | None = None,
) -> dict[str, dict[str, dict]]:
    """date -> output column (head) -> profile, of each date's prediction files of this run (of
    its `attempt`, when given: the files this process wrote), and those it `adopted` (resume)."""
    columns = [columns] if isinstance(columns, str) else list(columns)
    out = {}
    for d in dates:
        files = run_files(table, col, d, run_id, attempt=attempt) + list((adopted or {}).get(d, []))
        partials = partials_of(table, files, columns)
        out[d] = {c: merge([p[c] for p in partials]) for c in columns}
    return out


def partials_of(table: Location, files: list[TableFile], columns: list[str]) -> list[dict[str, Partial]]:
    """Per file, one partial per column: from its footer, or (without one) by reading the file."""
    known, unread = [], []
    for f in files:
        found = {c: f.stats.partial_for(c) for c in columns} if f.stats is not None else {}
        if found and all(p is not None for p in found.values()):
            known.append(found)
        else:
            unread.append(table.join(f.path).path)
    if unread:
        log.info("%d of %d files have no output stats in their footer: reading them", len(unread), len(files))
    return known + partials_of_files(table.fs, unread, columns)


def _file_partial(fs, path: str, columns: list[str]) -> dict[str, Partial]:
    import pyarrow.parquet as pq

    from models.outputs import profiled_values

    with fs.open_input_file(path) as f:
        table = pq.read_table(f, columns=columns)
    return {c: partial_of(profiled_values(table.column(c))) for c in columns}


def partials_of_files(fs, paths: list[str], columns: list[str]) -> list[dict[str, Partial]]:
    """One partial per file and column, by parallel Ray tasks (inline without Ray)."""
    return map_files(_file_partial, fs, paths, columns)
