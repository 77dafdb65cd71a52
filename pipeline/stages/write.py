"""Write stage: partitioned Parquet straight under the predictions table's location.

A file written here is not part of the table until the date's commit adds it to the Delta log, so
no Delta reader sees it before then, and nothing is copied or renamed afterwards (no staging area:
on S3 a rename is a copy). Files of runs that died before committing are removed by
`batchscore vacuum` once they are older than the retention.

Each file carries, in its footer, the key fingerprint and the score profile of the rows written
into it (pipeline/filestats.py): the commit reads footers, not the data again.

Files approach `output.target_rows_per_file`: the write stage collects blocks until it has that
many rows (Ray Data's `min_rows_per_write` bundling, a buffer bounded by the target) and writes
them as one file per partition, split evenly into files of at most the target. A write starts as
soon as its rows are there, not when the predictor has finished."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import pyarrow as pa
from ray.data import Dataset, SaveMode
from ray.data._internal.datasource.parquet_datasink import ParquetDatasink
from ray.data.datasource import FilenameProvider

from pipeline.config import OutputConfig
from pipeline.stages.layout import OutputFiles
from pipeline.storage import Location, is_s3
from pipeline.tablefiles import run_file_prefix


class RunFileNames(FilenameProvider):
    """Names per attempt: part-<run_id>.<attempt>.<write uuid>-<task>-<i>.parquet. The write uuid is
    fixed for the attempt's one write (Ray's APPEND mode requires it), so a retried write task
    rewrites its own file, and the attempt's files are found by their prefix; another process with
    the same run id has another attempt, so never the same names."""

    def __init__(self, run_id: str, attempt: str = "") -> None:
        super().__init__(file_format=None)
        self.run_id, self.attempt = run_id, attempt

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"{run_file_prefix(self.run_id, attempt=self.attempt)}{write_uuid}-{task_index:06d}"


class PredictionFiles(ParquetDatasink):
    """Ray Data's Parquet datasink (its on_write_start/complete, file names, retries), writing each
    file itself so that the file's footer carries the stats of its own rows."""

    def __init__(
        self,
        table: Location,
        out: OutputConfig,
        run_id: str,
        attempt: str = "",
    ) -> None:
        super().__init__(
            table.path,
            filesystem=table.fs,
            partition_cols=list(out.partition_columns),
            mode=SaveMode.APPEND,  # the table's committed files stay; ours have run-unique names
            filename_provider=RunFileNames(run_id, attempt),
        )
        self.files = OutputFiles.for_output(table, out)

    @property
    def min_rows_per_write(self) -> int:
        return self.files.target

    def write(self, blocks: Iterable, ctx) -> None:
        from ray._common.retry import call_with_retry
        from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME
        from ray.data.block import BlockAccessor

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return
        name = self.filename_provider.get_filename_for_task(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx)
        rows = pa.concat_tables(tables, promote_options="default")

        def write_all() -> None:
            self.files.write(rows, lambda i: f"{name}-{i}.parquet")

        call_with_retry(
            write_all,
            description=f"write '{name}' to '{self.path}'",
            match=self._data_context.retried_io_errors,
            max_attempts=10,
            max_backoff_s=32,
        )


def write_tasks_at_once(cluster_cpus: float, fused_cap: int | None) -> int:
    """The most write tasks at once: one per CPU (write tasks are short), and never equal to the
    size of a fused read+score stage. Ray Data fuses task-pool stages of equal size, and with the
    write's row target it fuses score -> write and splits the read off instead (measured, Ray
    2.60: every input row then goes through the object store, and scoring runs as one task per
    target rows instead of one per input file)."""
    k = max(2, int(cluster_cpus))
    return k + 1 if k == fused_cap else k


def write_predictions(
    ds: Dataset, table: Location, out: OutputConfig, run_id: str, concurrency: int, attempt: str = ""
) -> Dataset:
    """Executes the whole lazy pipeline: rows stream from read to files under the table.
    `concurrency`: from `write_tasks_at_once`."""
    # Ray's file datasink deletes a directory it created when no row reached it: a run whose rows
    # all went to the dead-letter table (under this same directory) would lose them. A directory
    # that exists before the write is never deleted. (S3 has no directories to delete.)
    if not is_s3(table.uri):
        table.fs.create_dir(table.path, recursive=True)
    # Ray warns when a write stage gets fewer blocks than its task limit: harmless here
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for 'Write'")
    # Not ds.repartition(): Ray 2.60's streaming repartition did not combine blocks from different
    # tasks and held every write back until the predictor had finished (a 5-7 s tail on 4 M rows).
    ds.write_datasink(PredictionFiles(table, out, run_id, attempt), concurrency=concurrency)
    return ds  # the executed Dataset: its stats describe this run
