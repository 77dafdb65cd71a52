"""Write stage: partitioned Parquet into this run's staging area (published later by `commit`)."""

from __future__ import annotations

import logging

from ray.data import Dataset, SaveMode
from ray.data.datasource import FilenameProvider

from pipeline.config import OutputConfig
from pipeline.storage import Location, is_s3

STAGING_DIR = "_staging"


class RunFileNames(FilenameProvider):
    """Deterministic names per run: part-<run_id>-<task>-<i>.parquet (no random write uuid).

    The staging directory belongs to this run alone, so names need no uuid to be unique; Ray
    appends -<i> when one task writes several files.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(file_format=None)
        self.run_id = run_id

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{self.run_id}-{task_index:06d}"


def staging_location(output: Location, run_id: str) -> Location:
    return output.join(STAGING_DIR, run_id)


def write_staged(ds: Dataset, staging: Location, out: OutputConfig, run_id: str) -> Dataset:
    """Executes the whole lazy pipeline: rows stream from read to these files."""
    compression = None if out.compression == "none" else out.compression
    # Ray's file datasink deletes a directory it created when no row reached it: a run whose rows
    # all went to the dead-letter output (staged under this same directory) would lose them. A
    # directory that exists before the write is never deleted. (S3 has no directories to delete.)
    if not is_s3(staging.uri):
        staging.fs.create_dir(staging.path, recursive=True)
    # No repartition before the write: Ray 2.60's streaming repartition did not combine blocks
    # from different tasks and held every write back until the predictor had finished (a 5-7 s
    # tail on 4 M rows). Blocks are one per input file (see read.py), so files follow the input's
    # layout, split at target_rows_per_file.
    # Ray logs a warning when OVERWRITE finds the (new, empty) directory created above
    logging.getLogger("ray.data.datasource.file_datasink").setLevel(logging.ERROR)
    ds.write_parquet(
        staging.path,
        filesystem=staging.fs,
        partition_cols=list(out.partition_columns),
        max_rows_per_file=out.target_rows_per_file,
        mode=SaveMode.OVERWRITE,  # the staging directory is this run's own; APPEND needs uuid names
        filename_provider=RunFileNames(run_id),
        compression=compression,
    )
    return ds  # the executed Dataset: its stats describe this run
