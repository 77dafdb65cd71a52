"""Write stage: partitioned Parquet into this run's staging area (published later by `commit`)."""

from __future__ import annotations

from ray.data import Dataset, SaveMode
from ray.data.datasource import FilenameProvider

from pipeline.config import OutputConfig
from pipeline.storage import Location

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
    # Streaming coalesce (no shuffle): small blocks are combined, large ones split, so files
    # hold about target_rows_per_file rows instead of one small file per block.
    ds = ds.repartition(target_num_rows_per_block=out.target_rows_per_file)
    ds.write_parquet(
        staging.path,
        filesystem=staging.fs,
        partition_cols=list(out.partition_columns),
        max_rows_per_file=out.target_rows_per_file,
        mode=SaveMode.OVERWRITE,  # the staging directory is this run's own
        filename_provider=RunFileNames(run_id),
        compression=compression,
    )
    return ds  # the executed Dataset: its stats describe this run
