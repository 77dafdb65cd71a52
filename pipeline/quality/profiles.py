"""Score profiles of a run's prediction files: one Ray task per file reads the score column and
summarizes it (models.scoreprofile); the driver merges a few hundred numbers per file."""

from __future__ import annotations

from models.scoreprofile import Partial, merge, partial_of
from pipeline.commit.tables import run_file_prefix
from pipeline.storage import Location, list_files


def profile_partitions(
    table: Location, col: str, dates: list[str], score_column: str, run_id: str
) -> dict[str, dict]:
    """The score profile of each date's prediction files written by this run."""
    out = {}
    for d in dates:
        src = table.join(f"{col}={d}")
        prefix = run_file_prefix(run_id)
        paths = [i.path for i in list_files(src, suffix=".parquet") if i.base_name.startswith(prefix)]
        out[d] = merge(partials_of_files(src.fs, paths, score_column))
    return out


def _file_partial(fs, path: str, column: str) -> Partial:
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        col = pq.read_table(f, columns=[column]).column(column)
    return partial_of(col.to_numpy(zero_copy_only=False))


def partials_of_files(fs, paths: list[str], column: str) -> list[Partial]:
    """One partial per file, by parallel Ray tasks (inline without Ray)."""
    import ray

    if not paths:
        return []
    if not ray.is_initialized():
        return [_file_partial(fs, p, column) for p in paths]
    # OSError: a storage error that got through the S3 client's own retries (seen: a HEAD answered
    # 503 with no body, which the AWS SDK does not retry) is retried as a whole task
    task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[OSError])(_file_partial)
    fs_ref = ray.put(fs)
    return ray.get([task.remote(fs_ref, p, column) for p in paths])
