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
from pipeline.storage import Location, list_files


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

    @property
    def paths(self) -> list[str]:
        return [f.path for p in self.partitions for f in p.files]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)


def _read_footer(root: Location, path: str) -> tuple[int, pa.Schema]:
    uri = root.uri + "/" + posixpath.relpath(path, root.path)
    try:
        with root.fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
            return md.num_rows, md.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{uri}: not a readable Parquet file (corrupt or truncated?): {e}") from e


def discover(root: Location, dates: list[str], partition_column: str = "ds") -> InputPlan:
    """List the files of each requested date and read their footers. Errors name the path."""
    if not dates:
        raise InputError("no dates to score: give --date/--start/--end or input.dates in the config")
    partitions: list[InputPartition] = []
    for d in dates:
        part = root.join(f"{partition_column}={d}")
        files = list_files(part, suffix=".parquet")
        if not files:
            what = "has no .parquet files" if _exists(part) else "does not exist"
            raise InputError(f"input partition {part.uri} {what}")
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
    all_files = [f for p in partitions for f in p.files]
    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(lambda f: _read_footer(root, f.path), all_files))
    for f, (rows, schema) in zip(all_files, footers, strict=True):
        f.rows, f.schema = rows, schema
    return InputPlan(root=root, partition_column=partition_column, partitions=partitions)


def _exists(loc: Location) -> bool:
    from pipeline.storage import exists

    return exists(loc)


def read_dataset(plan: InputPlan, columns: list[str]):
    """The lazy Ray Dataset over exactly the planned files, with the partition column added."""
    import ray.data
    from ray.data.datasource.partitioning import Partitioning

    ds = ray.data.read_parquet(
        plan.paths,
        filesystem=plan.root.fs,
        partitioning=Partitioning("hive", base_dir=plan.root.path, field_names=None),
    )
    return ds.select_columns(columns)  # pushed down into the Parquet reader
