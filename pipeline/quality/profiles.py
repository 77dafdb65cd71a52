"""Score profiles of a run's prediction files: each file's footer holds the summary of its scores
(models.scoreprofile's Partial, written with the file: pipeline/commit/filestats.py), so the
driver merges a few hundred numbers per file, read from footers. A file without one is read by a
Ray task (its score column only)."""

from __future__ import annotations

import logging

from models.scoreprofile import Partial, merge, partial_of
from pipeline.commit.tables import TableFile, run_files
from pipeline.storage import Location, map_files

log = logging.getLogger("batchscore")


def profile_partitions(
    table: Location, col: str, dates: list[str], score_column: str, run_id: str
) -> dict[str, dict]:
    """The score profile of each date's prediction files written by this run."""
    return {d: merge(partials_of(table, run_files(table, col, d, run_id), score_column)) for d in dates}


def partials_of(table: Location, files: list[TableFile], score_column: str) -> list[Partial]:
    """One partial per file: from its footer, or (without one) by reading its score column."""
    known, unread = [], []
    for f in files:
        p = f.stats.partial_for(score_column) if f.stats is not None else None
        if p is None:
            unread.append(table.join(f.path).path)
        else:
            known.append(p)
    if unread:
        log.info("%d of %d files have no score stats in their footer: reading them", len(unread), len(files))
    return known + partials_of_files(table.fs, unread, score_column)


def _file_partial(fs, path: str, column: str) -> Partial:
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        col = pq.read_table(f, columns=[column]).column(column)
    return partial_of(col.to_numpy(zero_copy_only=False))


def partials_of_files(fs, paths: list[str], column: str) -> list[Partial]:
    """One partial per file, by parallel Ray tasks (inline without Ray)."""
    return map_files(_file_partial, fs, paths, column)
