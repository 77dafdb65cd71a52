"""Read stage: find the requested ds= partitions, check their footers, and build the lazy read.

Only the requested partitions are listed and opened; only the needed columns are read.
Footers (row counts, schemas) are read on the driver in parallel threads: metadata only, no rows.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.storage import Location, exists, list_files


@dataclass
class InputFile:
    path: str
    uri: str
    size: int
    rows: int
    schema: pa.Schema


@dataclass
class InputPartition:
    date: str
    uri: str
    files: list[InputFile] = field(default_factory=list)

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


def _read_footer(root: Location, path: str) -> tuple[int, pa.Schema] | str:
    """(rows, schema), or the reason the file cannot be read."""
    uri = root.uri + "/" + posixpath.relpath(path, root.path)
    try:
        with root.fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
            return md.num_rows, md.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as e:
        return f"{uri}: not a readable Parquet file (corrupt or truncated?): {e}"


def discover(
    root: Location, dates: list[str], partition_column: str = "ds", on_bad_file: str = "fail"
) -> InputPlan:
    """List the files of each requested date and read their footers. Errors name the path.

    With on_bad_file='skip', unreadable files and missing or empty dates are left out and
    recorded in `InputPlan.skipped` instead of failing the run.
    """
    if not dates:
        raise InputError("no dates to score: give --date/--start/--end or input.dates in the config")
    partitions: list[InputPartition] = []
    skipped: list[dict[str, str]] = []
    problems: list[str] = []
    for d in dates:
        part = root.join(f"{partition_column}={d}")
        files = list_files(part, suffix=".parquet")
        if not files:
            what = "has no .parquet files" if exists(part) else "does not exist"
            if on_bad_file == "skip":
                skipped.append({"date": d, "uri": part.uri, "reason": f"input partition {what}"})
                continue
            problems.append(f"input partition {part.uri} {what}")
            continue
        partitions.append(
            InputPartition(
                date=d,
                uri=part.uri,
                files=[
                    InputFile(
                        path=i.path,
                        uri=root.uri + "/" + posixpath.relpath(i.path, root.path),
                        size=i.size,
                        rows=0,
                        schema=pa.schema([]),
                    )
                    for i in files
                ],
            )
        )
    if problems:
        raise InputError(
            "\n  ".join(problems) if len(problems) == 1 else "input problems:\n  " + "\n  ".join(problems)
        )
    all_files = [f for p in partitions for f in p.files]
    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(lambda f: _read_footer(root, f.path), all_files))
    bad = {}
    for f, footer in zip(all_files, footers, strict=True):
        if isinstance(footer, str):
            bad[f.path] = footer
        else:
            f.rows, f.schema = footer
    plan = InputPlan(root=root, partition_column=partition_column, partitions=partitions, skipped=skipped)
    if bad:
        if on_bad_file != "skip":
            raise InputError(
                "\n  ".join(bad.values())
                if len(bad) == 1
                else "unreadable input files:\n  " + "\n  ".join(bad.values())
            )
        drop_files(plan, bad)
    if not plan.partitions:
        raise InputError(f"nothing to score: every requested date was skipped: {plan.skipped}")
    return plan


def drop_files(plan: InputPlan, reasons: dict[str, str]) -> None:
    """Leave out files (path -> reason) and record them; a date left with no files is skipped."""
    kept = []
    for part in plan.partitions:
        for f in part.files:
            if f.path in reasons:
                plan.skipped.append({"date": part.date, "uri": f.uri, "reason": reasons[f.path]})
        part.files = [f for f in part.files if f.path not in reasons]
        if part.files:
            kept.append(part)
        else:
            plan.skipped.append({"date": part.date, "uri": part.uri, "reason": "every file was skipped"})
    plan.partitions = kept


def read_dataset(plan: InputPlan, columns: list[str], concurrency: int | None = None):
    """The lazy Ray Dataset over exactly the planned files, with the partition column added.
    `concurrency`: the most read tasks at once (must equal a fused stage's cap to fuse with it)."""
    import ray.data
    from ray.data.datasource.partitioning import Partitioning

    ds = ray.data.read_parquet(
        plan.paths,
        filesystem=plan.root.fs,
        partitioning=Partitioning("hive", base_dir=plan.root.path, field_names=None),
        # One read task per file, and no splitting of its output into extra blocks: a split read
        # cannot be fused with the scoring stage, and small blocks cost per-block overhead in every
        # stage (measured on 4 M rows / 16 files, 2 CPUs: pipeline 24 s -> 13.5 s fused).
        override_num_blocks=max(1, len(plan.paths)),
        concurrency=concurrency,
    )
    return ds.select_columns(columns)  # pushed down into the Parquet reader
