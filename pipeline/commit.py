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

from pipeline.deadletter import DEAD_LETTER_DIR, REASON_COLUMN
from pipeline.errors import UserError
from pipeline.read import InputPlan
from pipeline.reconcile import fingerprint_files, total
from pipeline.storage import Location, delete_dir, exists, list_files, read_bytes, write_bytes

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
    scoring_hash: str = ""
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
    scoring_hash: str = ""


def _staged_files(staging: Location) -> list[OutputFile]:
    infos = list_files(staging, suffix=".parquet")

    def footer(info):
        with staging.fs.open_input_file(info.path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        return OutputFile(name=posixpath.relpath(info.path, staging.path), rows=rows, bytes=info.size)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(footer, infos))


@dataclass
class CommitPolicy:
    key_columns: list[str]
    verify: str = "keys"
    max_bad_row_fraction: float = 0.01


def _publish(src: Location, dst: Location, files: list[OutputFile]) -> None:
    """Move staged files into place, then drop files there that this set does not list."""
    dst.fs.create_dir(dst.path, recursive=True)
    for f in files:
        target = dst.join(f.name)
        dst.fs.create_dir(posixpath.dirname(target.path), recursive=True)
        dst.fs.move(src.join(f.name).path, target.path)


def _drop_unlisted(dst: Location, files: list[OutputFile]) -> None:
    keep = {f.name for f in files}
    for old in list_files(dst, suffix=".parquet"):
        if posixpath.relpath(old.path, dst.path) not in keep:
            dst.fs.delete_file(old.path)


def _reason_counts(loc: Location, files: list[OutputFile], limit_files: int = 20) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in files[:limit_files]:
        with loc.fs.open_input_file(loc.join(f.name).path) as fh:
            for r in pq.read_table(fh, columns=[REASON_COLUMN]).column(REASON_COLUMN).to_pylist():
                counts[r] = counts.get(r, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:10])


def commit_partitions(
    output: Location,
    staging: Location,
    inputs: InputPlan,
    run: RunIdentity,
    policy: CommitPolicy,
    extra: dict[str, dict[str, Any]] | None = None,
    cleanup: bool = True,
) -> list[PartitionManifest]:
    """Check every partition first; publish only if all pass (a failed run publishes nothing).

    Per partition: input rows = output rows + dead-letter rows; with verify='keys' also the
    multiset of keys (hash sums); dead-letter rows within max_bad_row_fraction. `extra[date]` is
    added to that partition's manifest (e.g. its score profile). `cleanup`: delete the staging
    directory afterwards (not while the run still writes other dates into it).
    """
    col = inputs.partition_column
    plans = []
    problems = []
    for part in inputs.partitions:
        src = staging.join(f"{col}={part.date}")
        dl_src = staging.join(DEAD_LETTER_DIR, f"{col}={part.date}")
        staged, dead = _staged_files(src), _staged_files(dl_src)
        out_rows, dead_rows = sum(f.rows for f in staged), sum(f.rows for f in dead)
        where = f"{col}={part.date}"
        if out_rows + dead_rows != part.rows:
            problems.append(
                f"{where}: {part.rows} input rows but {out_rows} output + {dead_rows} dead-letter rows"
            )
        elif policy.verify == "keys":
            fp_in = total(fingerprint_files(inputs.root.fs, [f.path for f in part.files], policy.key_columns))
            fp_out = total(
                fingerprint_files(src.fs, [src.join(f.name).path for f in staged], policy.key_columns)
                + fingerprint_files(dl_src.fs, [dl_src.join(f.name).path for f in dead], policy.key_columns)
            )
            if fp_in != fp_out:
                problems.append(
                    f"{where}: counts match ({part.rows} rows) but the keys differ: some rows are "
                    "duplicated while others are missing"
                )
        if part.rows and dead_rows / part.rows > policy.max_bad_row_fraction:
            reasons = _reason_counts(dl_src, dead)
            problems.append(
                f"{where}: {dead_rows} of {part.rows} rows ({dead_rows / part.rows:.2%}) cannot be scored, "
                f"over output.max_bad_row_fraction={policy.max_bad_row_fraction:g}; reasons: {reasons}"
            )
        plans.append((part, src, dl_src, staged, dead))
    if problems:
        raise CommitError("reconciliation failed, nothing published:\n  " + "\n  ".join(problems))

    manifests = []
    for part, src, dl_src, staged, dead in plans:
        dst = output.join(f"{col}={part.date}")
        dl_dst = output.join(DEAD_LETTER_DIR, f"{col}={part.date}")
        _publish(src, dst, staged)
        if dead:
            _publish(dl_src, dl_dst, dead)
        manifest = PartitionManifest(
            partition={col: part.date},
            run_id=run.run_id,
            job=run.job,
            model_version=run.model_version,
            model_sha256=run.model_sha256,
            config_hash=run.config_hash,
            input_files=[{"uri": f.uri, "rows": f.rows, "bytes": f.size} for f in part.files],
            input_rows=part.rows,
            output_files=staged,
            output_rows=sum(f.rows for f in staged),
            dead_letter_rows=sum(f.rows for f in dead),
            scoring_hash=run.scoring_hash,
            committed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            extra={
                "dead_letter_files": [asdict(f) for f in dead],
                "dead_letter_reasons": _reason_counts(dl_dst, dead) if dead else {},
                "skipped_input_files": [s for s in inputs.skipped if s.get("date") == part.date],
                "verified": policy.verify,
                **(extra or {}).get(part.date, {}),
            },
        )
        write_bytes(dst.join(MANIFEST), json.dumps(asdict(manifest), indent=2).encode())  # the commit point
        _drop_unlisted(dst, staged)
        _drop_unlisted(dl_dst, dead)
        manifests.append(manifest)
    if cleanup:
        delete_dir(staging)
    return manifests


def read_manifest(partition_dir: Location) -> dict[str, Any] | None:
    loc = partition_dir.join(MANIFEST)
    if not exists(loc):
        return None
    return json.loads(read_bytes(loc))


def is_committed_with(
    output: Location, partition_column: str, date: str, model_sha256: str, scoring_hash: str
) -> bool:
    """The date is committed by a run with this model and this scoring config (so rescoring it
    would give the same predictions)."""
    m = read_manifest(output.join(f"{partition_column}={date}"))
    return bool(m) and m.get("model_sha256") == model_sha256 and m.get("scoring_hash") == scoring_hash


def committed_files(output: Location, date: str, partition_column: str = "ds") -> list[str]:
    """Paths of the committed files of one partition (empty if it is not committed)."""
    part = output.join(f"{partition_column}={date}")
    manifest = read_manifest(part)
    if manifest is None:
        return []
    return [part.join(f["name"]).path for f in manifest["output_files"]]
