"""Score profiles of a run's prediction files: one Ray task per file reads the score column and
summarizes it (models.scoreprofile); the driver merges a few hundred numbers per file."""

from __future__ import annotations

from models.scoreprofile import Partial, merge, partial_of
from pipeline.commit.tables import list_run_files
from pipeline.storage import Location, map_files


def profile_partitions(
    table: Location, col: str, dates: list[str], score_column: str, run_id: str
) -> dict[str, dict]:
    """The score profile of each date's prediction files written by this run."""
    out = {}
    for d in dates:
        paths = [i.path for i in list_run_files(table, col, d, run_id)]
        out[d] = merge(partials_of_files(table.fs, paths, score_column))
    return out


def _file_partial(fs, path: str, column: str) -> Partial:
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        col = pq.read_table(f, columns=[column]).column(column)
    return partial_of(col.to_numpy(zero_copy_only=False))


def partials_of_files(fs, paths: list[str], column: str) -> list[Partial]:
    """One partial per file, by parallel Ray tasks (inline without Ray)."""
    return map_files(_file_partial, fs, paths, column)
