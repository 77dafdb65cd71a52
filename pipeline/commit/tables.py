"""The output as Delta Lake tables (delta-rs): the predictions and, beside them, the dead letters.

The commit point of a date is one Delta transaction that removes the date's current files and adds
the new ones (`mode="overwrite"` with a partition filter on the date). Files written by the run but
not yet in the log are invisible to every Delta reader (Spark, DuckDB, polars, Athena, deltalake).

Concurrency needs no lock service: delta-rs commits optimistically (put-if-absent of the next log
entry; on S3 a conditional PUT), and two overwrites of one date conflict, so exactly one commits.

What a date was committed with is read from the log, not from side files. Each commit of a date
records Delta application transactions (`txn` actions, kept in every snapshot):

    batchscore/<col>=<date>                     -> g   the date's generation (1, 2, ...)
    batchscore/<col>=<date>/model/<digest>      -> g   model sha256 + scoring config
    batchscore/<col>=<date>/inputs/<digest>     -> g   input files (path, size, mtime)
    batchscore/<col>=<date>/run/<run id>        -> g   the run that committed it
    batchscore/<col>=<date>/attempt/<attempt>   -> g   the process (attempt of the run) that did
    batchscore/<col>=<date>/withdrawn           -> g   the date was taken out (a file changed)

so "is this date committed with this model and these inputs" is three lookups in the snapshot:
an identity is current exactly when its version equals the date's generation. The commit's
metadata (`commitInfo`) carries the run id, model, input files and counts for people and reports."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobConfig, StorageConfig
from pipeline.errors import UserError
from pipeline.filestats import stats_from_footer, vacuum_input_keys
from pipeline.storage import Location, is_s3, list_files, resolve
from pipeline.tablefiles import (  # noqa: F401 - re-exported: the names this module's users know
    HIVE_NULL,
    METADATA_KEY,
    TableFile,
    commits_of_history,
    list_run_files,
    partition_values,
    run_file_prefix,
    run_files,
)

log = logging.getLogger("batchscore")


APP_PREFIX = "batchscore"


DEAD_LETTER_TABLE = "_dead_letter"


def storage_options(uri: str, storage: StorageConfig) -> dict[str, str] | None:
    """delta-rs options for an s3:// table. Credentials are not among them: delta-rs reads them from
    the environment (AWS_ACCESS_KEY_ID, ..., AWS_PROFILE, web identity, instance metadata)."""
    if not is_s3(uri):
        return None
    opts = {"AWS_REGION": storage.region, "conditional_put": "etag"}
    if storage.endpoint_url:
        opts["AWS_ENDPOINT_URL"] = storage.endpoint_url
        if urlparse(storage.endpoint_url).scheme == "http":
            opts["AWS_ALLOW_HTTP"] = "true"
    if storage.anonymous:
        opts["AWS_SKIP_SIGNATURE"] = "true"
    return opts


def date_app_id(col: str, date: str) -> str:
    return f"{APP_PREFIX}/{col}={date}"


def identity_app_id(col: str, date: str, kind: str, digest: str) -> str:
    return f"{APP_PREFIX}/{col}={date}/{kind}/{digest}"


def withdrawn_app_id(col: str, date: str) -> str:
    return f"{date_app_id(col, date)}/withdrawn"


def digest_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class DateIdentity:
    """What decides a date's predictions: the model and scoring config, and the input files."""

    model: str  # digest of model sha256 + scoring config
    inputs: str  # digest of the input files (path, size, mtime)


@dataclass(frozen=True)
class DateState:
    generation: int | None  # None: the date was never committed
    same_model: bool
    same_inputs: bool
    dead_letters_current: bool
    withdrawn: bool = False  # the current generation took the date out of the table

    @property
    def committed_as_asked(self) -> bool:
        return (
            self.generation is not None and self.same_model and self.same_inputs and self.dead_letters_current
        )

    def why_rescored(self) -> str:
        if self.generation is None:
            return "not committed yet"
        if self.withdrawn:
            return "withdrawn: a file of its last commit changed after the commit (see `batchscore history`)"
        if not self.same_model:
            return "committed with another model or scoring config"
        if not self.same_inputs:
            return "its input files changed since the commit (size or modification time)"
        return "its dead letters were not committed (the last run stopped between the two commits)"


def committed_files(table_loc: Location, table, col: str, date: str) -> list[TableFile]:
    """The files of one date in the table's current snapshot (whoever wrote them), with the row
    count and the stats each footer holds (footers only, no rows read)."""
    uris = table.file_uris(file_pruning_predicate=[(col, "=", date)])
    paths = [unquote(u.split("://", 1)[-1]) for u in uris]

    def footer(info) -> TableFile:
        with table_loc.fs.open_input_file(info.path) as f:
            md = pq.ParquetFile(f).metadata
        rel = posixpath.relpath(info.path, table_loc.path)
        mtime = int(info.mtime.timestamp() * 1000) if info.mtime is not None else 0
        return TableFile(rel, info.size, md.num_rows, mtime, partition_values(rel), stats_from_footer(md))

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(footer, table_loc.fs.get_file_info(paths) if paths else []))


def file_schema(table: Location, f: TableFile):
    with table.fs.open_input_file(table.join(f.path).path) as fh:
        return pq.ParquetFile(fh).schema_arrow


def delete_files(root: Location, paths: list[str], options: dict[str, str] | None) -> None:
    """Delete files under `root` (paths relative to it); `options`: delta-rs's for an s3:// root.
    On S3 through delta-rs's object store, not pyarrow: pyarrow's S3 delete_file writes a zero-byte
    marker object for the parent directory (`ds=DATE/`) on every delete, which no Delta log
    references and neither client can remove later (both strip the key's trailing '/')."""
    if options is None or not is_s3(root.uri):
        for p in paths:
            root.fs.delete_file(root.join(p).path)
        return
    from deltalake.fs import DeltaStorageHandler

    handler = DeltaStorageHandler(root.uri, options)
    for p in paths:
        handler.delete_file(p)


def delete_run_files(table: DeltaOutput, files: list[TableFile]) -> None:
    """Remove files this run wrote but never committed (best effort: vacuum removes leftovers)."""
    try:
        table.delete_files([f.path for f in files])
    except Exception as e:  # pyarrow raises OSError, delta-rs its own errors
        log.debug("could not delete files of %s: %s", table.uri, e)


class DeltaOutput:
    """One Delta table at `location` (the predictions, or the dead letters)."""

    def __init__(self, location: Location, storage: StorageConfig, partition_by: list[str]) -> None:
        self.location = location
        self.partition_by = list(partition_by)
        self.uri = location.uri
        self.options = storage_options(location.uri, storage)

    def delete_files(self, paths: list[str]) -> None:
        """Delete files under the table (relative paths), leaving no directory markers on S3."""
        if paths:
            delete_files(self.location, paths, self.options)

    def open(self, version: int | None = None):
        """The table (at `version`, default the latest), or None when there is no table yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri, version=version, storage_options=self.options)
        except TableNotFoundError:
            return None

    def open_or_create(self, schema: pa.Schema):
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        table = self.open()
        if table is not None:
            return table
        try:
            DeltaTable.create(
                self.uri,
                schema,
                mode="ignore",
                partition_by=self.partition_by,
                storage_options=self.options,
            )
        except DeltaError as e:  # another run created it at the same moment: use theirs
            log.debug("table create raced: %s", e)
        table = self.open()
        if table is None:
            raise UserError(f"could not create the Delta table {self.uri}")
        return table

    def state(self, table, col: str, date: str, identity: DateIdentity, dead_letters=None) -> DateState:
        if table is None:
            return DateState(None, False, False, False)
        g = table.transaction_version(date_app_id(col, date))
        if g is None:
            return DateState(None, False, False, False)
        dl_g = dead_letters.transaction_version(date_app_id(col, date)) if dead_letters is not None else None
        return DateState(
            generation=g,
            same_model=table.transaction_version(identity_app_id(col, date, "model", identity.model)) == g,
            same_inputs=table.transaction_version(identity_app_id(col, date, "inputs", identity.inputs)) == g,
            dead_letters_current=dl_g == g,
            withdrawn=table.transaction_version(withdrawn_app_id(col, date)) == g,
        )

    def ever_committed_by(self, table, col: str, date: str, run_id: str, attempt: str = "") -> bool:
        """The run (its `attempt`, when given) committed this date at some version (its files may
        be in older snapshots)."""
        app = (
            identity_app_id(col, date, "attempt", attempt)
            if attempt
            else identity_app_id(col, date, "run", run_id)
        )
        return table is not None and table.transaction_version(app) is not None

    def committed_by(self, table, col: str, date: str, run_id: str, attempt: str = "") -> int | None:
        """The date's generation when its current commit is this run's (attempt's) own, else None."""
        if table is None:
            return None
        current = table.transaction_version(date_app_id(col, date))
        app = (
            identity_app_id(col, date, "attempt", attempt)
            if attempt
            else identity_app_id(col, date, "run", run_id)
        )
        return current if current is not None and table.transaction_version(app) == current else None

    def commit_date(
        self,
        table,
        col: str,
        date: str,
        files: list[TableFile],
        schema: pa.Schema,
        generation: int,
        identity: DateIdentity | None,
        metadata: dict[str, Any],
        run_id: str,
        attempt: str = "",
        withdraw: bool = False,
    ) -> None:
        """One transaction: the date's current files out, `files` in (`version_of` tells the
        version it got). Raises deltalake's CommitFailedError when a concurrent commit touched the
        same date. `withdraw` (with no files): the date leaves the table, marked as withdrawn."""
        from deltalake import CommitProperties
        from deltalake.transaction import AddAction, Transaction

        actions = [
            AddAction(
                path=quote(f.path, safe="/="),
                size=f.size,
                partition_values=f.partition,
                modification_time=f.mtime_ms,
                data_change=True,
                stats=json.dumps({"numRecords": f.rows}),
            )
            for f in files
        ]
        txns = [
            Transaction(date_app_id(col, date), generation),
            Transaction(identity_app_id(col, date, "run", run_id), generation),
        ]
        if attempt:
            txns.append(Transaction(identity_app_id(col, date, "attempt", attempt), generation))
        if withdraw:
            txns.append(Transaction(withdrawn_app_id(col, date), generation))
        if identity is not None:
            txns += [
                Transaction(identity_app_id(col, date, "model", identity.model), generation),
                Transaction(identity_app_id(col, date, "inputs", identity.inputs), generation),
            ]
        table.create_write_transaction(
            actions,
            mode="overwrite",
            schema=schema,
            partition_by=self.partition_by,
            partition_filters=[(col, "=", date)],
            commit_properties=CommitProperties(
                custom_metadata={METADATA_KEY: metadata}, app_transactions=txns
            ),
        )

    def version_of(self, table, date: str, run_id: str, attempt: str = "") -> int:
        """The version our commit got (the table object is not refreshed by the commit, and other
        runs may have committed right after it)."""
        table.update_incremental()
        for c in commits_of_history(table, 50):
            if c.get("run_id") == run_id and c.get("date") == date and c.get("attempt", "") == attempt:
                return int(c["version"])
        return table.version()

    def vacuum(self, table, retention_hours: float, dry_run: bool = False) -> list[str]:
        """Delete files that no version of the last `retention_hours` references: files removed by
        a commit longer ago, and files never committed (runs that died) once that old. Folders
        starting with '_' (the dead-letter table, run reports) are not part of this table's files."""
        return table.vacuum(
            retention_hours=int(retention_hours) if retention_hours else 0,
            dry_run=dry_run,
            enforce_retention_duration=False,
            full=True,
        )


def table_schema(file_schema: pa.Schema, partition_by: list[str]) -> pa.Schema:
    """The table's schema: the data files' columns plus the partition columns (strings)."""
    fields = [f.remove_metadata() for f in file_schema if f.name not in partition_by]
    fields += [pa.field(c, pa.string()) for c in partition_by]
    return pa.schema(fields)


def check_schema(table, schema: pa.Schema) -> None:
    """The run's files must match the existing table's columns (names and types)."""
    from deltalake import Schema as DeltaSchema

    current = table.schema()
    ours = DeltaSchema.from_arrow(schema)
    have = {f.name: str(f.type) for f in current.fields}
    want = {f.name: str(f.type) for f in ours.fields}
    if have != want:
        diff = sorted(
            f"{k}: table has {have.get(k, '-')}, this run writes {want.get(k, '-')}"
            for k in set(have) | set(want)
            if have.get(k) != want.get(k)
        )
        raise UserError(
            f"output table {table.table_uri}: this run's columns differ from the table's "
            f"({'; '.join(diff)}); write to a new output.uri, or keep the key and score columns as they were"
        )


def check_partitioning(table, partition_by: list[str]) -> None:
    """output.partition_columns must be the table's: files laid out otherwise would commit
    partition values the table does not declare (or lack ones it does)."""
    have = list(table.metadata().partition_columns)
    if have != list(partition_by):
        raise UserError(
            f"output table {table.table_uri}: partitioned by {have}, but output.partition_columns is "
            f"{list(partition_by)}; keep the table's partitioning or write to a new output.uri"
        )


@dataclass
class OutputTables:
    """The predictions table (output.uri) and the dead-letter table inside it (_dead_letter)."""

    predictions: DeltaOutput
    dead_letters: DeltaOutput
    partition_column: str

    @classmethod
    def for_config(cls, cfg: JobConfig) -> OutputTables:
        loc = resolve(cfg.output.uri, cfg.storage)
        col = cfg.input.partition_column
        return cls(
            DeltaOutput(loc, cfg.storage, list(cfg.output.partition_columns)),
            DeltaOutput(loc.join(DEAD_LETTER_TABLE), cfg.storage, [col]),
            col,
        )

    @property
    def location(self) -> Location:
        return self.predictions.location

    def state(self, date: str, identity: DateIdentity) -> DateState:
        return self.predictions.state(
            self.predictions.open(), self.partition_column, date, identity, self.dead_letters.open()
        )


class WrittenRows:
    """Rows in the complete Parquet files under a directory so far whose names start with
    `prefix` (one run's files), footers read once per new file; a file still being written has
    no readable footer yet and counts on a later call."""

    def __init__(self, directory: Location, prefix: str = "") -> None:
        self.directory = directory
        self.prefix = prefix
        self.seen: dict[str, int] = {}

    def __call__(self) -> int:
        import pyarrow.parquet as pq

        total = 0
        with contextlib.suppress(OSError):  # progress only: a failed listing counts on a later poll
            for info in list_files(self.directory, suffix=".parquet"):
                if not info.base_name.startswith(self.prefix):
                    continue
                if info.path not in self.seen:
                    try:
                        with self.directory.fs.open_input_file(info.path) as f:
                            self.seen[info.path] = pq.ParquetFile(f).metadata.num_rows
                    except (OSError, pa.ArrowInvalid):
                        continue  # still being written: counted on a later poll
                total += self.seen[info.path]
        return total


def vacuum_tables(tables, retention_hours: float, dry_run: bool = False) -> dict[str, Any]:
    """Delete files no reader of the last `retention_hours` needs: files removed from both tables
    longer ago than that, and files of runs that died before committing, once that old, with the
    key records such runs left under _runs/RUN/input_keys (`input_keys`: those folders)."""
    out: dict[str, Any] = {"retention_hours": retention_hours, "dry_run": dry_run}
    for name, t in (("predictions", tables.predictions), ("dead_letters", tables.dead_letters)):
        table = t.open()
        out[name] = [] if table is None else t.vacuum(table, retention_hours, dry_run)
    out["input_keys"] = vacuum_input_keys(tables.location, retention_hours, dry_run)
    return out
