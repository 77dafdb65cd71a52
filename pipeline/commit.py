"""Commit stage: verify each partition's staged output, publish it, write its manifest last.

Layout of a committed partition:

    OUT/ds=D/part-<run_id>-<n>.parquet ...   the files of the committing run
    OUT/ds=D/_manifest.json                  written last: the commit point

Readers that go through the manifest (`committed_files`) see either the old or the new
partition, never a mix. Files in a partition directory that its manifest does not list are
leftovers of an interrupted publish and are removed by the next commit of that partition.
"""

from __future__ import annotations

import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.read import InputPartition
from pipeline.storage import Location, delete_dir, list_files, read_bytes, write_bytes

MANIFEST = "_manifest.json"


class CommitError(UserError):
    """A partition failed its checks; nothing of it was published."""

    exit_code = 1


@dataclass
class OutputFile:
    name: str
    rows: int
    bytes: int


@dataclass
class PartitionManifest:
    partition: dict[str, str]
    run_id: str
    job: str
    model_version: str
    model_sha256: str
    config_hash: str
    input_files: list[dict[str, Any]]
    input_rows: int
    output_files: list[OutputFile]
    output_rows: int
    dead_letter_rows: int = 0
    committed_at: str = ""
    format_version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunIdentity:
    run_id: str
    job: str
    model_version: str
    model_sha256: str
    config_hash: str


def _staged_files(staging: Location) -> list[OutputFile]:
    infos = list_files(staging, suffix=".parquet")

    def footer(info):
        with staging.fs.open_input_file(info.path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        return OutputFile(name=posixpath.relpath(info.path, staging.path), rows=rows, bytes=info.size)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(footer, infos))


def commit_partitions(
    output: Location,
    staging: Location,
    partitions: list[InputPartition],
    partition_column: str,
    run: RunIdentity,
) -> list[PartitionManifest]:
    """Check every partition first; publish only if all pass (a failed run publishes nothing)."""
    plans: list[tuple[InputPartition, list[OutputFile]]] = []
    problems = []
    for part in partitions:
        staged = _staged_files(staging.join(f"{partition_column}={part.date}"))
        got = sum(f.rows for f in staged)
        if got != part.rows:
            problems.append(f"{partition_column}={part.date}: {part.rows} input rows but {got} output rows")
        plans.append((part, staged))
    if problems:
        raise CommitError("row reconciliation failed, nothing published:\n  " + "\n  ".join(problems))

    manifests = []
    for part, staged in plans:
        src = staging.join(f"{partition_column}={part.date}")
        dst = output.join(f"{partition_column}={part.date}")
        dst.fs.create_dir(dst.path, recursive=True)
        for f in staged:
            target = dst.join(f.name)
            dst.fs.create_dir(posixpath.dirname(target.path), recursive=True)
            dst.fs.move(src.join(f.name).path, target.path)
        manifest = PartitionManifest(
            partition={partition_column: part.date},
            run_id=run.run_id,
            job=run.job,
            model_version=run.model_version,
            model_sha256=run.model_sha256,
            config_hash=run.config_hash,
            input_files=[{"uri": f.uri, "rows": f.rows, "bytes": f.size} for f in part.files],
            input_rows=part.rows,
            output_files=staged,
            output_rows=sum(f.rows for f in staged),
            committed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        write_bytes(dst.join(MANIFEST), json.dumps(asdict(manifest), indent=2).encode())
        keep = {f.name for f in staged}
        for old in list_files(dst, suffix=".parquet"):
            if posixpath.relpath(old.path, dst.path) not in keep:
                dst.fs.delete_file(old.path)
        manifests.append(manifest)
    delete_dir(staging)
    return manifests


def read_manifest(partition_dir: Location) -> dict[str, Any] | None:
    loc = partition_dir.join(MANIFEST)
    try:
        return json.loads(read_bytes(loc))
    except FileNotFoundError:
        return None


def committed_files(output: Location, date: str, partition_column: str = "ds") -> list[str]:
    """Paths of the committed files of one partition (empty if it is not committed)."""
    part = output.join(f"{partition_column}={date}")
    manifest = read_manifest(part)
    if manifest is None:
        return []
    return [part.join(f["name"]).path for f in manifest["output_files"]]
