"""Profiles of a run's prediction files: one Ray task per file reads the output columns and
summarizes each (models.scoreprofile; an embedding column by its vectors' L2 norms,
models.outputs.profiled_values); the driver merges a few hundred numbers per file and column."""

from __future__ import annotations

from models.scoreprofile import Partial, merge, partial_of
from pipeline.commit.tables import list_run_files
from pipeline.storage import Location, map_files


def profile_partitions(
    table: Location, col: str, dates: list[str], columns: list[str] | str, run_id: str
) -> dict[str, dict[str, dict]]:
    """date -> output column (head) -> profile, of each date's prediction files of this run."""
    columns = [columns] if isinstance(columns, str) else list(columns)
    out = {}
    for d in dates:
        paths = [i.path for i in list_run_files(table, col, d, run_id)]
        partials = partials_of_files(table.fs, paths, columns)
        out[d] = {c: merge([p[c] for p in partials]) for c in columns}
    return out


def _file_partial(fs, path: str, columns: list[str]) -> dict[str, Partial]:
    import pyarrow.parquet as pq

    from models.outputs import profiled_values

    with fs.open_input_file(path) as f:
        table = pq.read_table(f, columns=columns)
    return {c: partial_of(profiled_values(table.column(c))) for c in columns}


def partials_of_files(fs, paths: list[str], columns: list[str]) -> list[dict[str, Partial]]:
    """One partial per file and column, by parallel Ray tasks (inline without Ray)."""
    return map_files(_file_partial, fs, paths, columns)
