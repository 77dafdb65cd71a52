"""Write stage: partitioned Parquet straight under the predictions table's location.

A file written here is not part of the table until the date's commit adds it to the Delta log, so
no Delta reader sees it before then, and nothing is copied or renamed afterwards (no staging area:
on S3 a rename is a copy). Files of runs that died before committing are removed by
`batchscore vacuum` once they are older than the retention."""

from __future__ import annotations

from ray.data import Dataset, SaveMode
from ray.data.datasource import FilenameProvider

from pipeline.commit.tables import run_file_prefix
from pipeline.config import OutputConfig
from pipeline.storage import Location, is_s3


class RunFileNames(FilenameProvider):
    """Names per run: part-<run_id>.<write uuid>-<task>-<i>.parquet. The write uuid is fixed for the
    run's one write (Ray's APPEND mode requires it), so a retried write task rewrites its own file,
    and the run's files are found by their prefix."""

    def __init__(self, run_id: str) -> None:
        super().__init__(file_format=None)
        self.run_id = run_id

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"{run_file_prefix(self.run_id)}{write_uuid}-{task_index:06d}"


def write_predictions(ds: Dataset, table: Location, out: OutputConfig, run_id: str) -> Dataset:
    """Executes the whole lazy pipeline: rows stream from read to files under the table."""
    compression = None if out.compression == "none" else out.compression
    # Ray's file datasink deletes a directory it created when no row reached it: a run whose rows
    # all went to the dead-letter table (under this same directory) would lose them. A directory
    # that exists before the write is never deleted. (S3 has no directories to delete.)
    if not is_s3(table.uri):
        table.fs.create_dir(table.path, recursive=True)
    # No repartition before the write: Ray 2.60's streaming repartition did not combine blocks
    # from different tasks and held every write back until the predictor had finished (a 5-7 s
    # tail on 4 M rows). Blocks are one per input file (see read.py), so files follow the input's
    # layout, split at target_rows_per_file.
    ds.write_parquet(
        table.path,
        filesystem=table.fs,
        partition_cols=list(out.partition_columns),
        max_rows_per_file=out.target_rows_per_file,
        mode=SaveMode.APPEND,  # the table's committed files stay; ours have run-unique names
        filename_provider=RunFileNames(run_id),
        compression=compression,
    )
    return ds  # the executed Dataset: its stats describe this run
