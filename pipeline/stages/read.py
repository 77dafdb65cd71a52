"""Read stage: find the requested ds= partitions, check their footers, and build the lazy read.

Only the requested partitions are listed and opened; only the needed columns are read.
Footers (row counts, schemas) are read on the driver in parallel threads: metadata only, no rows."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.constcols import constant_strings
from pipeline.errors import InputError
from pipeline.storage import Location, exists, list_files


@dataclass
class InputFile:
    path: str
    uri: str
    size: int
    rows: int
    schema: pa.Schema
    mtime_ns: int = 0  # with size: the file as it was when scored (input pinning)
    row_groups: int = 1  # from the footer: a big file's row groups can be split over read tasks


@dataclass
class InputPartition:
    date: str
    uri: str
    files: list[InputFile] = field(default_factory=list)
    listed: list[tuple[str, int, int]] = field(default_factory=list)  # (uri, size, mtime) as listed

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass
class InputPlan:
    root: Location
    partition_column: str
    partitions: list[InputPartition]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"date", "uri", "reason"}

    @property
    def paths(self) -> list[str]:
        return [f.path for p in self.partitions for f in p.files]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)


def _stored_partition_values(pf: pq.ParquetFile, column: str) -> set[str]:
    """The distinct values of the partition column stored inside the file (from row-group
    statistics; the column itself when a row group has none)."""
    md, idx = pf.metadata, pf.schema_arrow.get_field_index(column)
    values: set[str] = set()
    for i in range(md.num_row_groups):
        stats = md.row_group(i).column(idx).statistics
        if stats is not None and stats.has_min_max:
            values |= {str(stats.min), str(stats.max)}
        else:
            col = pf.read_row_group(i, columns=[column]).column(0)
            values |= {str(v) for v in col.unique().to_pylist()}
    return values


def _read_footer(root: Location, path: str, partition: tuple[str, str]) -> tuple[int, pa.Schema, int] | str:
    """(rows, schema, row groups), or the reason the file cannot be used. A file that stores its own
    partition column must agree with its directory (ds=D holds only rows of D)."""
    uri = root.uri + "/" + posixpath.relpath(path, root.path)
    col, date = partition
    try:
        with root.fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            md, schema = pf.metadata, pf.schema_arrow
            if col in schema.names and md.num_rows:
                stored = _stored_partition_values(pf, col) - {date}
                if stored:
                    return (
                        f"{uri}: its column {col!r} holds {sorted(stored)[:3]} but the file is under "
                        f"{col}={date}; fix the file or its directory"
                    )
            return md.num_rows, schema, md.num_row_groups
    except (pa.ArrowInvalid, OSError) as e:
        return f"{uri}: not a readable Parquet file (corrupt or truncated?): {e}"


def list_inputs(root: Location, dates: list[str], partition_column: str = "ds") -> dict[str, InputPartition]:
    """The .parquet files of each requested date, as listed (path, size, mtime; no footers read).
    Dates with no files are left out."""
    found = {}
    for d in dates:
        part = root.join(f"{partition_column}={d}")
        files = list_files(part, suffix=".parquet")
        if files:
            found[d] = InputPartition(
                date=d,
                uri=part.uri,
                files=[
                    InputFile(
                        path=i.path,
                        uri=root.uri + "/" + posixpath.relpath(i.path, root.path),
                        size=i.size,
                        rows=0,
                        schema=pa.schema([]),
                        mtime_ns=int(i.mtime_ns or 0),
                    )
                    for i in files
                ],
            )
            found[d].listed = sorted((f.uri, f.size, f.mtime_ns) for f in found[d].files)
    return found


def raise_problems(problems: list[str], header: str = "input problems:") -> None:
    """One InputError naming every problem found (a single one on its own line), so one fix-up
    round mends them all; nothing when there are none."""
    if problems:
        raise InputError(problems[0] if len(problems) == 1 else header + "\n  " + "\n  ".join(problems))


def discover(
    root: Location,
    dates: list[str],
    partition_column: str = "ds",
    on_bad_file: str = "fail",
    listed: dict[str, InputPartition] | None = None,
) -> InputPlan:
    """List the files of each requested date and read their footers. Errors name the path.

    With on_bad_file='skip', unreadable files and missing or empty dates are left out and
    recorded in `InputPlan.skipped` instead of failing the run. `listed`: from `list_inputs`.
    """
    plan, problems = survey(root, dates, partition_column, on_bad_file, listed)
    raise_problems(problems)
    return plan


def survey(
    root: Location,
    dates: list[str],
    partition_column: str = "ds",
    on_bad_file: str = "fail",
    listed: dict[str, InputPartition] | None = None,
) -> tuple[InputPlan, list[str]]:
    """`discover`, returning the missing dates and unreadable files (on_bad_file='fail') beside a
    plan of the readable files instead of raising them, so that a caller checking those files'
    schemas too reports every problem of the range in one round (pipeline/run/preflight.py)."""
    if not dates:
        raise InputError("no dates to score: give --date/--start/--end or input.dates in the config")
    listed = listed if listed is not None else list_inputs(root, dates, partition_column)
    partitions: list[InputPartition] = []
    skipped: list[dict[str, str]] = []
    problems: list[str] = []
    for d in dates:
        if d in listed:
            partitions.append(listed[d])
            continue
        part = root.join(f"{partition_column}={d}")
        what = "has no .parquet files" if exists(part) else "does not exist"
        if on_bad_file == "skip":
            skipped.append({"date": d, "uri": part.uri, "reason": f"input partition {what}"})
        else:
            problems.append(f"input partition {part.uri} {what}")
    if problems and not partitions and not exists(root):  # one cause, named as the config names it
        raise InputError(f"input.uri {root.uri} does not exist (no dates to read: {', '.join(dates)})")
    all_files = [(f, p.date) for p in partitions for f in p.files]
    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(
            pool.map(lambda fd: _read_footer(root, fd[0].path, (partition_column, fd[1])), all_files)
        )
    all_files = [f for f, _ in all_files]
    bad = {}
    for f, footer in zip(all_files, footers, strict=True):
        if isinstance(footer, str):
            bad[f.path] = footer
        else:
            f.rows, f.schema, f.row_groups = footer
    plan = InputPlan(root=root, partition_column=partition_column, partitions=partitions, skipped=skipped)
    if bad and on_bad_file == "skip":
        drop_files(plan, bad)
    elif bad:  # reported below; out of the plan, so the schema check reads only the readable files
        _leave_out(plan, bad)
    problems += bad.values() if on_bad_file != "skip" else []
    if not problems and not plan.partitions:
        raise InputError(f"nothing to score: every requested date was skipped: {plan.skipped}")
    return plan, problems


def _leave_out(plan: InputPlan, paths: dict[str, str]) -> None:
    """Take files out of the plan without recording them as skipped: they are reported as errors."""
    for part in plan.partitions:
        part.files = [f for f in part.files if f.path not in paths]
    plan.partitions = [part for part in plan.partitions if part.files]


def drop_files(plan: InputPlan, reasons: dict[str, str]) -> None:
    """Leave out files (path -> reason) and record them; a date left with no files is skipped."""
    kept = []
    for part in plan.partitions:
        for f in part.files:
            if f.path in reasons:  # the reason starts with the file's URI, recorded beside it
                reason = reasons[f.path].removeprefix(f"{f.uri}: ")
                plan.skipped.append({"date": part.date, "uri": f.uri, "reason": reason})
        part.files = [f for f in part.files if f.path not in reasons]
        if part.files:
            kept.append(part)
        else:
            plan.skipped.append({"date": part.date, "uri": part.uri, "reason": "every file was skipped"})
    plan.partitions = kept


def _read_row_group(pf: pq.ParquetFile, i: int, columns: list[str], uri: str) -> pa.Table:
    """Row group `i`, errors as `_read_error` names them."""
    try:
        return pf.read_row_group(i, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise _read_error(e, uri, i) from e


def _row_group_head(
    pf: pq.ParquetFile, i: int, columns: list[str], uri: str, rows: int
) -> Iterator[pa.Table]:
    """Row group `i` as two tables: its first `rows` rows, then the rest, which is decoded only
    when asked for (after the first has been scored); errors as `_read_error` names them."""
    try:
        batches = pf.iter_batches(batch_size=rows, row_groups=[i], columns=columns, use_threads=False)
        head = pa.Table.from_batches([next(batches)])
        yield head
        yield pa.Table.from_batches(list(batches), schema=head.schema)
    except (pa.ArrowInvalid, OSError) as e:
        raise _read_error(e, uri, i) from e


def _read_error(e: Exception, uri: str, i: int) -> Exception:
    """Damaged pages behind a good footer are bad input (InputError, exit 2); a storage error
    that outlived the S3 client's retries stays an OSError, with the file named."""
    if isinstance(e, OSError) and "AWS Error" in str(e):
        return OSError(f"{uri}: reading row group {i} failed: {e}")
    why = f"not a readable Parquet file (corrupt or truncated?): row group {i}: {e}"
    return InputError(f"{uri}: {why}")


class PlannedParquet:
    """The planned input files as a Ray Data source: one read task per file (or per range of a
    big file's row groups), row counts and schemas taken from the footers discovery already read.

    `ray.data.read_parquet` would list every path again (one request per file on S3), build a
    pyarrow dataset over them, and run sampling tasks that read a row group of several files to
    estimate the in-memory size; those tasks wait for worker processes to start, which on a new
    local Ray was 2-3 s of the time to the first scored batch (measured on 2 CPUs). Here the
    plan is the listing and the footers are the metadata."""

    # Ray Data's own in-memory/on-disk ratio for Parquet when it does not sample
    # (PARQUET_ENCODING_RATIO_ESTIMATE_DEFAULT): used only to size its memory budget.
    ENCODING_RATIO = 5

    def __init__(self, plan: InputPlan, columns: list[str], read_keys: Any = None) -> None:
        self.fs = plan.root.fs
        self.partition_column = plan.partition_column
        self.columns = list(columns)
        self.files = [(f, part.date) for part in plan.partitions for f in part.files]
        self.read_keys = read_keys

    def read_task_blocks(
        self,
        f: InputFile,
        date: str,
        max_block_bytes: int | None,
        groups: range | None = None,
        first_rows: int | None = None,
    ) -> Iterator[pa.Table]:
        """What one read task yields: the file's blocks (only row groups `groups`, when a big
        file is split over tasks; None: the whole file), through `read_keys.record` when set.
        `first_rows`: see `read_file`."""
        blocks = self.read_file(f, date, max_block_bytes, groups, first_rows)
        if self.read_keys is None:
            return blocks
        part = None if groups is None else (groups.start, groups.stop, f.row_groups)
        return self.read_keys.record([f.path], blocks, part)

    def read_tasks(self, parallelism: int) -> list[tuple[InputFile, str, range | None]]:
        """(file, date, row groups or None for the whole file) of each read task: a task per
        file, and a file's row groups split over several tasks when it holds more than its share
        of the `parallelism` tasks wanted (its rows over all rows), so a few big files still keep
        every CPU busy."""
        rows = sum(f.rows for f, _ in self.files) or 1
        tasks: list[tuple[InputFile, str, range | None]] = []
        for f, d in self.files:
            k = min(f.row_groups, round(parallelism * f.rows / rows))
            if k <= 1:
                tasks.append((f, d, None))
            else:
                tasks += [(f, d, range(f.row_groups * i // k, f.row_groups * (i + 1) // k)) for i in range(k)]
        return tasks

    def schema_of(self, f: InputFile) -> pa.Schema:
        """The block's schema: the file's columns, and the partition column from the directory
        (a string, as Ray's hive partitioning gives it) unless the file stores it."""
        col = self.partition_column
        return pa.schema(
            [f.schema.field(c) if c in f.schema.names else pa.field(col, pa.string()) for c in self.columns]
        )

    def read_file(
        self,
        f: InputFile,
        date: str,
        max_block_bytes: int | None = None,
        groups: range | None = None,
        first_rows: int | None = None,
    ) -> Iterator[pa.Table]:
        """The file's rows (of row groups `groups` only, when given) as blocks of whole row
        groups, each at most about `max_block_bytes` in memory (Ray Data's target block size; one
        block for files of ordinary size). A file that breaks while its rows are read (discovery
        read only its footer) fails naming it. `first_rows`: the first block is only the first
        that many rows (decoded alone), the rest of its row group joining the next block: what a
        replica whose model is still loading needs for its first forward pass, without decoding
        the whole file first on the CPU that the load needs too."""
        stored = [c for c in self.columns if c in f.schema.names]
        with self.fs.open_input_file(f.path) as fh:
            pf = pq.ParquetFile(fh)
            pending: list[pa.Table] = []
            for i in groups if groups is not None else range(pf.metadata.num_row_groups):
                head_rows, first_rows = first_rows, None  # the first row group only
                if head_rows and pf.metadata.row_group(i).num_rows > head_rows:
                    parts = _row_group_head(pf, i, stored, f.uri, head_rows)
                    yield self._block([next(parts)], date)
                    pending.append(next(parts))  # the rest, decoded after the head's forward pass
                    continue
                pending.append(_read_row_group(pf, i, stored, f.uri))
                if max_block_bytes and sum(t.nbytes for t in pending) >= max_block_bytes:
                    yield self._block(pending, date)
                    pending = []
            if pending and sum(t.num_rows for t in pending):
                yield self._block(pending, date)

    def _block(self, tables: list[pa.Table], date: str) -> pa.Table:
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        col = self.partition_column
        if col not in table.column_names:
            table = table.append_column(pa.field(col, pa.string()), constant_strings(date, table.num_rows))
        return table.select(self.columns)

    def as_ray_datasource(self, parallelism: int = 1):
        """The Ray Data source of `read_tasks(parallelism)`: give Ray exactly their number as
        `override_num_blocks`. A different number makes Ray add a SplitBlocks step to the
        read, and a split read is not fused with the scoring stage."""
        from ray.data import DataContext
        from ray.data.block import BlockMetadata
        from ray.data.datasource import Datasource, ReadTask

        source = self

        class _Source(Datasource):
            def get_name(self) -> str:
                return "Parquet"  # operator names stay ReadParquet->... in stats and reports

            def estimate_inmemory_data_size(self) -> int:
                return sum(f.size for f, _ in source.files) * source.ENCODING_RATIO

            def get_read_tasks(self, _: int, per_task_row_limit=None, data_context=None):
                ctx = data_context or DataContext.get_current()
                block_bytes = ctx.target_max_block_size
                return [
                    ReadTask(
                        lambda f=f, d=d, g=g: source.read_task_blocks(f, d, block_bytes, g),
                        BlockMetadata(
                            num_rows=f.rows if g is None else None,
                            size_bytes=(f.size if g is None else f.size * len(g) // f.row_groups)
                            * source.ENCODING_RATIO,
                            exec_stats=None,
                            input_files=[f.path],
                        ),
                        schema=source.schema_of(f),
                        per_task_row_limit=per_task_row_limit,
                    )
                    for f, d, g in source.read_tasks(parallelism)  # ours, not what Ray passes
                ]

        return _Source()


def read_dataset(
    plan: InputPlan,
    columns: list[str],
    concurrency: int | None = None,
    read_keys: Any = None,
    parallelism: int = 1,
):
    """The lazy Ray Dataset over exactly the planned files: the needed columns and the partition
    column, one read task per file, or per range of a big file's row groups when there are fewer
    files than `parallelism` (the cluster's CPUs) wants. `concurrency`: the most read tasks at
    once (must equal a fused stage's cap to fuse with it). `read_keys`: an object whose
    `record(files, blocks, row_groups)` passes each read task's blocks through and records what
    it saw (the input's key fingerprints for the commit); None: the blocks as read.

    A task reads whole row groups, in blocks of Ray Data's target size: a split inside Ray Data
    cannot be fused with the scoring stage, and small blocks cost per-block overhead in every
    stage (measured on 4 M rows / 16 files, 2 CPUs: pipeline 24 s -> 13.5 s fused)."""
    import ray.data

    source = PlannedParquet(plan, columns, read_keys)
    return ray.data.read_datasource(
        source.as_ray_datasource(parallelism),
        override_num_blocks=max(1, len(source.read_tasks(parallelism))),
        concurrency=concurrency,
    )
