"""Commit stage: reconcile each date's written files, then commit them as one Delta transaction.

Per date, before anything is committed:
  - input rows = this run's prediction rows + dead-letter rows (from the files' footers);
  - with verify='keys', the multiset of input keys = output keys + dead-letter keys (hash sums;
    the written files' sums are in their footers, see pipeline/filestats.py);
  - dead-letter rows within output.max_bad_row_fraction.
Then the predictions commit (the commit point for every reader: the date's old files out, the
new ones in), then the dead-letter table's commit of the same date, with the same generation.

Two runs of one date race on the Delta log and exactly one commits (pipeline/commit/tables.py).
The loser finds the winner's commit: with the same model, scoring config and inputs it reports the
date as done by the other run (a no-op); otherwise it stops with exit code 4 and publishes nothing
of that date. Its own files of the date are deleted either way (they were never in the log)."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow.parquet as pq

from pipeline.commit.tables import (
    DateIdentity,
    OutputTables,
    TableFile,
    check_partitioning,
    check_schema,
    committed_files,
    date_app_id,
    delete_run_files,
    digest_of,
    file_schema,
    run_file_prefix,
    run_files,
    table_schema,
)
from pipeline.errors import CommitConflictError, CommitError, StorageError
from pipeline.filestats import ReadKeys
from pipeline.keys import Fingerprint, fingerprint_files, total
from pipeline.stages.deadletter import REASON_COLUMN, dead_letter_schema
from pipeline.stages.read import InputPartition, InputPlan
from pipeline.storage import Location

log = logging.getLogger("batchscore")

# Test hooks (tests/integration/test_race.py), unset in production: each names a file that the
# process writes, then stops itself with SIGSTOP, at one moment of a date's commit, so that a test
# can SIGKILL it there or let it go on (SIGCONT) when it chooses: the race windows made reproducible.
PAUSE_BEFORE_COMMIT_ENV = "BATCHSCORE_TEST_PAUSE_BEFORE_COMMIT"  # checked; the predictions' commit next
PAUSE_BETWEEN_COMMITS_ENV = "BATCHSCORE_TEST_PAUSE_BETWEEN_COMMITS"  # predictions in; dead letters next


@dataclass
class RunIdentity:
    run_id: str
    job: str
    model_version: str
    model_sha256: str
    config_hash: str
    scoring_hash: str = ""
    # each date's generation in the log when the run planned it: a different one at commit time
    # means another run committed the date meanwhile (see `_lost_race`)
    seen: dict[str, int | None] = field(default_factory=dict)
    # the process's attempt of the run (pipeline/run/attempt.py): its files are the ones committed
    attempt: str = ""
    # called before each commit: raises when this attempt may no longer commit (its lease lapsed)
    check_lease: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    # a registry model: uri, name, resolved version, alias, artifacts' checksum (RegistryVersion.record)
    model_registry: dict[str, Any] | None = None
    # date -> "part" | "dl" -> files a dead attempt wrote that this run adopted (pipeline/run/resume.py):
    # committed with the run's own, never deleted by it
    adopted: dict[str, dict[str, list[TableFile]]] = field(default_factory=dict, repr=False, compare=False)

    def adopted_files(self, date: str, kind: str) -> list[TableFile]:
        return list(self.adopted.get(date, {}).get(kind, []))


@dataclass
class CommitPolicy:
    key_columns: list[str]
    verify: str = "keys"
    max_bad_row_fraction: float = 0.01
    read_keys: ReadKeys | None = None  # the input's fingerprints recorded by the read tasks
    top_k: Any = None  # a pipeline.commit.groups.TopKCheck: the date's files hold groups, not rows


@dataclass
class DateCommit:
    """What one date's commit did; `outcome` is 'committed' or 'done by another run'."""

    date: str
    version: int | None
    dead_letter_version: int | None
    input_rows: int
    output_rows: int
    dead_letter_rows: int
    output_files: list[str] = field(default_factory=list)
    dead_letter_files: list[str] = field(default_factory=list)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    outcome: str = "committed"
    file_sizes: dict[str, int] = field(default_factory=dict)  # the committed files, as committed


def identity_of(part: InputPartition, model_sha256: str, scoring_hash: str) -> DateIdentity:
    """Model + scoring config, and the date's input files as listed (path, size, mtime), skipped
    bad files included: the input as it was, so an unchanged input is recognized next time."""
    files = part.listed or sorted((f.uri, f.size, f.mtime_ns) for f in part.files)
    return DateIdentity(model=digest_of(model_sha256, scoring_hash), inputs=digest_of(files))


@dataclass
class _Checked:
    part: InputPartition
    staged: list[TableFile]
    dead: list[TableFile]


def _reason_counts(loc: Location, files: list[TableFile], limit_files: int = 20) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for f in files[:limit_files]:
        with loc.fs.open_input_file(loc.join(f.path).path) as fh:
            counts.update(pq.read_table(fh, columns=[REASON_COLUMN]).column(REASON_COLUMN).to_pylist())
    return dict(counts.most_common(10))


def written_fingerprint(loc: Location, files: list[TableFile], key_columns: list[str]) -> Fingerprint:
    """The key fingerprint of files this run wrote: from their footers' stats; a file without
    usable stats is read (by a Ray task per file)."""
    known, unread = [], []
    for f in files:
        fp = f.stats.fingerprint_for(key_columns) if f.stats is not None else None
        if fp is None:
            unread.append(loc.join(f.path).path)
        else:
            known.append(fp)
    counts = len(unread), len(files)
    if unread:
        log.info("%d of %d files under %s have no key stats in their footer: reading them", *counts, loc.uri)
    return total(known + fingerprint_files(loc.fs, unread, key_columns))


def input_fingerprint(root: Location, part: InputPartition, policy: CommitPolicy) -> Fingerprint:
    """The key fingerprint of the date's input files: as their read tasks recorded it; a file
    without a usable record (or every file, without `policy.read_keys`) is read by a Ray task."""
    files = {f.path: f.rows for f in part.files}
    if policy.read_keys is None:
        recorded, unread = Fingerprint(), sorted(files)
    else:
        recorded, unread = policy.read_keys.fingerprint(part.date, files)
        if unread:
            log.info(
                "%d of %d input files of %s have no recorded key fingerprint: reading them",
                len(unread),
                len(files),
                part.date,
            )
    return recorded + total(fingerprint_files(root.fs, unread, policy.key_columns))


def _check(tables: OutputTables, inputs: InputPlan, c: _Checked, policy: CommitPolicy) -> str | None:
    """Why this date's written files do not reconcile with its input, or None."""
    col, part, staged, dead = tables.partition_column, c.part, c.staged, c.dead
    preds, dls = tables.predictions.location, tables.dead_letters.location
    out_rows, dead_rows = sum(f.rows for f in staged), sum(f.rows for f in dead)
    where = f"{col}={part.date}"
    if policy.top_k is not None:
        from pipeline.commit.groups import check_groups

        group_keys = None
        if policy.verify == "keys":
            # the input's and the dead letters' group keys: as recorded by the read tasks (made with
            # the group_by columns for top-K) or from footers, else read
            by_group = replace(policy, key_columns=list(policy.top_k.group_by))
            group_keys = (
                input_fingerprint(inputs.root, part, by_group),
                written_fingerprint(dls, dead, by_group.key_columns),
            )
        why = check_groups(
            where,
            part.rows,
            preds.fs,
            [preds.join(f.path).path for f in staged],
            dead_rows,
            policy.top_k,
            group_keys,
        )
        return why or _bad_rows(where, part.rows, dead_rows, dls, dead, policy)
    if out_rows + dead_rows != part.rows:
        return f"{where}: {part.rows} input rows but {out_rows} output + {dead_rows} dead-letter rows"
    if policy.verify == "keys":
        fp_in = input_fingerprint(inputs.root, part, policy)
        fp_out = written_fingerprint(preds, staged, policy.key_columns) + written_fingerprint(
            dls, dead, policy.key_columns
        )
        if fp_in != fp_out:
            return (
                f"{where}: counts match ({part.rows} rows) but the keys differ: some rows are "
                "duplicated while others are missing"
            )
    return _bad_rows(where, part.rows, dead_rows, dls, dead, policy)


def _bad_rows(where: str, rows: int, dead_rows: int, dls: Location, dead, policy: CommitPolicy) -> str | None:
    if rows and dead_rows / rows > policy.max_bad_row_fraction:
        return (
            f"{where}: {dead_rows} of {rows} rows ({dead_rows / rows:.2%}) cannot be scored, "
            f"over output.max_bad_row_fraction={policy.max_bad_row_fraction:g}; "
            f"reasons: {_reason_counts(dls, dead)}"
        )
    return None


def _json_safe(value: Any) -> Any:
    """Delta commit metadata is JSON without NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _metadata(c: _Checked, run: RunIdentity, inputs: InputPlan, policy, extra: dict) -> dict[str, Any]:
    return _json_safe(
        {
            "date": c.part.date,
            "run_id": run.run_id,
            "attempt": run.attempt,
            "job": run.job,
            "model_version": run.model_version,
            "model_sha256": run.model_sha256,
            "config_hash": run.config_hash,
            "scoring_hash": run.scoring_hash,
            "input_files": [
                {"uri": f.uri, "rows": f.rows, "bytes": f.size, "mtime_ns": f.mtime_ns} for f in c.part.files
            ],
            "skipped_input_files": [s for s in inputs.skipped if s.get("date") == c.part.date],
            "input_rows": c.part.rows,
            "output_rows": sum(f.rows for f in c.staged),
            "dead_letter_rows": sum(f.rows for f in c.dead),
            "verified": policy.verify,
            "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"model_registry": run.model_registry} if run.model_registry else {}),
            **extra,
        }
    )


def commit_partitions(
    tables: OutputTables,
    inputs: InputPlan,
    run: RunIdentity,
    policy: CommitPolicy,
    extra: dict[str, dict[str, Any]] | None = None,
) -> list[DateCommit]:
    """Check every date first; commit only if all pass (a failed check publishes nothing), then
    one transaction per date, in date order. `extra[date]` goes into that commit's metadata."""
    problems, checked = [], []
    col = tables.partition_column
    for part in sorted(inputs.partitions, key=lambda p: p.date):
        c = _Checked(
            part,
            run_files(tables.predictions.location, col, part.date, run.run_id, attempt=run.attempt)
            + run.adopted_files(part.date, "part"),
            run_files(tables.dead_letters.location, col, part.date, run.run_id, "dl", run.attempt)
            + run.adopted_files(part.date, "dl"),
        )
        why = _check(tables, inputs, c, policy)
        if why:
            problems.append(why)
        checked.append(c)
    if problems:
        raise CommitError("reconciliation failed, nothing published:\n  " + "\n  ".join(problems))
    meta = {
        c.part.date: _metadata(c, run, inputs, policy, (extra or {}).get(c.part.date, {})) for c in checked
    }
    return [_commit_date(tables, c, run, policy, meta[c.part.date]) for c in checked]


def _schemas(tables: OutputTables, c: _Checked, key_columns: list[str]):
    """The predictions' table schema (None when no row was scored) and the dead letters'."""
    preds_loc, dl_loc = tables.predictions.location, tables.dead_letters.location
    col = tables.partition_column
    preds = None
    if c.staged:
        preds = table_schema(file_schema(preds_loc, c.staged[0]), tables.predictions.partition_by)
    if c.dead:
        dl = table_schema(file_schema(dl_loc, c.dead[0]), [col])
    else:
        dl = dead_letter_schema(c.part.files[0].schema, key_columns, col)
    return preds, dl


def _open_tables(tables: OutputTables, c: _Checked, policy: CommitPolicy):
    """Both tables (created on first use), checked against this run's columns and partitioning;
    returns them with the schemas to commit with (the tables' own)."""
    col, date = tables.partition_column, c.part.date
    preds_schema, dl_schema = _schemas(tables, c, policy.key_columns)
    preds = tables.predictions.open()
    if preds is None:
        if preds_schema is None:  # every row is a dead letter and there is no table yet
            raise CommitError(f"{col}={date}: no row could be scored, so there is no table schema yet")
        preds = tables.predictions.open_or_create(preds_schema)
    if preds_schema is not None:
        check_schema(preds, preds_schema)
    check_partitioning(preds, tables.predictions.partition_by)
    dls = tables.dead_letters.open_or_create(dl_schema)
    check_schema(dls, dl_schema)
    # the tables' own schemas: a different one would rewrite their metadata
    return preds, dls, _arrow_schema(preds), _arrow_schema(dls)


def _committed_by_this_run(tables: OutputTables, preds, date: str, run: RunIdentity) -> int | None:
    """The date's generation when its current commit is this attempt's own (a commit that landed
    although its reply was lost, or one made before an error later in the same step). By attempt,
    not run id: an earlier attempt's commit with the same run id holds other files."""
    return tables.predictions.committed_by(preds, tables.partition_column, date, run.run_id, run.attempt)


@dataclass
class _Published:
    """A date whose predictions this run has committed: what its dead letters' commit needs."""

    preds: Any
    dls: Any
    dl_schema: Any
    generation: int


def _commit_date(tables: OutputTables, c: _Checked, run, policy: CommitPolicy, meta: dict) -> DateCommit:
    """The predictions' commit, then the dead letters'. A storage error ends in a StorageError
    saying which of the two commits is in the log (a raw delta-rs or S3 traceback says neither)."""
    from deltalake.exceptions import DeltaError

    col, date = tables.partition_column, c.part.date
    try:
        done = _commit_predictions(tables, c, run, policy, meta)
    except (OSError, DeltaError) as e:
        raise StorageError(
            f"{col}={date}: storage failed during the commit of its predictions ({brief_error(e)}); nothing "
            "of it was published by this run, unless that commit landed and its reply was lost. Run "
            "the same command again: a date committed as asked is skipped, any other is scored again"
        ) from None
    if isinstance(done, DateCommit):  # another run committed the date first
        return done
    pause_for_test(PAUSE_BETWEEN_COMMITS_ENV, col, date)
    try:
        version = tables.predictions.version_of(done.preds, date, run.run_id, run.attempt)  # refreshes it
        dl_version = _commit_dead_letters(tables, done.dls, c, done.dl_schema, done.generation, meta)
    except (OSError, DeltaError) as e:
        raise StorageError(
            f"{col}={date}: its predictions are committed, but storage failed before its dead letters "
            f"were ({brief_error(e)}). Readers see the date's predictions whole; its "
            f"{sum(f.rows for f in c.dead)} dead letters are missing: run the same command again, it "
            "scores the date again and commits both"
        ) from None
    return DateCommit(
        date=date,
        version=version,
        dead_letter_version=dl_version,
        input_rows=c.part.rows,
        output_rows=sum(f.rows for f in c.staged),
        dead_letter_rows=sum(f.rows for f in c.dead),
        output_files=[f.path for f in c.staged],
        dead_letter_files=[f.path for f in c.dead],
        dead_letter_reasons=_reason_counts(tables.dead_letters.location, c.dead) if c.dead else {},
        file_sizes={f.path: f.size for f in c.staged},
    )


def _commit_predictions(
    tables: OutputTables, c: _Checked, run, policy: CommitPolicy, meta: dict
) -> _Published | DateCommit:
    """The date's predictions in one transaction: `_Published`, or the DateCommit of a lost race."""
    from deltalake.exceptions import CommitFailedError

    col, date = tables.partition_column, c.part.date
    preds, dls, schema, dl_schema = _open_tables(tables, c, policy)
    identity = identity_of(c.part, run.model_sha256, run.scoring_hash)
    generation = _committed_by_this_run(tables, preds, date, run)
    if generation is None:
        current = preds.transaction_version(date_app_id(col, date))
        if date in run.seen and current != run.seen[date]:
            return _lost_race(tables, c, run, policy, "it was committed after this run started")
        generation = (current or 0) + 1
        pause_for_test(PAUSE_BEFORE_COMMIT_ENV, col, date)  # resumed, it commits on a stale snapshot
        if run.check_lease is not None:
            run.check_lease()
        try:
            tables.predictions.commit_date(
                preds, col, date, c.staged, schema, generation, identity, meta, run.run_id, run.attempt
            )
        except CommitFailedError as e:
            preds = tables.predictions.open()
            if _committed_by_this_run(tables, preds, date, run) != generation:
                return _lost_race(tables, c, run, policy, f"delta-rs: {str(e)[:200]}")
    return _Published(preds, dls, dl_schema, generation)


def _named(f: TableFile, prefix: str) -> bool:
    return f.path.rsplit("/", 1)[-1].startswith(prefix)


def brief_error(e: BaseException, limit: int = 300) -> str:
    """An error's text on one line for a message: delta-rs colours its error chains for a terminal."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def pause_for_test(env: str, col: str, date: str) -> None:
    """A test hook (PAUSE_*_ENV) when its variable is set: the file says which process and date,
    written whole (a rename) so that a test polling for it never reads half of it."""
    path = os.environ.get(env)
    if not path:
        return
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {col}={date}\n")
    os.replace(path + ".tmp", path)
    os.kill(os.getpid(), signal.SIGSTOP)


def _arrow_schema(table) -> Any:
    import pyarrow as pa

    return pa.schema(table.schema().to_arrow())


def _commit_dead_letters(tables: OutputTables, dls, c: _Checked, schema, generation: int, meta) -> int | None:
    """The date's dead letters, with the predictions' generation. A concurrent commit is retried
    while our predictions are still the date's current ones; once a newer run has replaced them,
    its dead letters win and ours are dropped."""
    from deltalake.exceptions import CommitFailedError

    col, date = tables.partition_column, c.part.date
    run_id, attempt = meta["run_id"], meta.get("attempt", "")
    for _attempt in range(5):
        current = tables.predictions.open().transaction_version(date_app_id(col, date))
        if current != generation:
            log.warning("%s=%s was replaced by a newer run before its dead letters were committed", col, date)
            if not tables.dead_letters.ever_committed_by(dls, col, date, run_id, attempt):
                prefix = run_file_prefix(run_id, "dl", attempt)  # adopted files are not its to delete
                delete_run_files(tables.dead_letters, [f for f in c.dead if _named(f, prefix)])
            return None
        if tables.dead_letters.committed_by(dls, col, date, run_id, attempt) == generation:
            return tables.dead_letters.version_of(dls, date, run_id, attempt)  # landed despite a conflict
        try:
            tables.dead_letters.commit_date(
                dls,
                col,
                date,
                c.dead,
                schema,
                generation,
                None,
                {"date": date, "run_id": run_id, "attempt": attempt},
                run_id,
                attempt,
            )
            return tables.dead_letters.version_of(dls, date, run_id, attempt)  # refreshes `dls`
        except CommitFailedError:
            dls = tables.dead_letters.open()
    raise CommitError(f"{col}={date}: the dead-letter table kept changing under this run's commit")


def _lost_race(tables: OutputTables, c: _Checked, run, policy: CommitPolicy, how: str) -> DateCommit:
    """Another run committed the date between our read of the log and our commit. With the same
    model, scoring config and inputs the date is theirs; if their dead letters of it are not in the
    log (that run may have died between its two commits), this run commits its own, which are the
    same rows (`_stand_in_dead_letters`), or fails: a date is never left without them by a run
    that exits 0."""
    col, date = tables.partition_column, c.part.date
    identity = identity_of(c.part, run.model_sha256, run.scoring_hash)
    preds = tables.predictions.open()
    state = tables.predictions.state(preds, col, date, identity, tables.dead_letters.open())
    dl_version = None
    if state.same_model and state.same_inputs and not state.dead_letters_current:
        dl_version = _stand_in_dead_letters(tables, c, run, policy, preds, state.generation)
    if not tables.predictions.ever_committed_by(preds, col, date, run.run_id, run.attempt):
        # its own files only: adopted ones may be what the winner committed
        mine = (
            run_file_prefix(run.run_id, "part", run.attempt),
            run_file_prefix(run.run_id, "dl", run.attempt),
        )
        delete_run_files(tables.predictions, [f for f in c.staged if _named(f, mine[0])])
        if dl_version is None:  # committed ones are the table's now
            delete_run_files(tables.dead_letters, [f for f in c.dead if _named(f, mine[1])])
    if state.same_model and state.same_inputs:
        log.info("%s=%s: another run committed it first with the same model and inputs (a no-op)", col, date)
        return DateCommit(
            date=date,
            version=preds.version(),
            dead_letter_version=dl_version,
            input_rows=c.part.rows,
            output_rows=0,
            dead_letter_rows=sum(f.rows for f in c.dead) if dl_version is not None else 0,
            dead_letter_files=[f.path for f in c.dead] if dl_version is not None else [],
            outcome="done by another run",
        )
    raise CommitConflictError(
        f"{col}={date}: another run committed this date while this run was scoring it, and it differs "
        f"from this run's ({state.why_rescored()}; table version {preds.version()}); nothing of this "
        f"run was published for it. Run again to replace it ({how})"
    )


def _stand_in_dead_letters(tables: OutputTables, c: _Checked, run, policy, preds, generation) -> int | None:
    """Commit this run's dead letters of a date whose predictions another run with the same model,
    scoring config and inputs committed without its dead letters. Ours are that run's rows when its
    committed predictions are ours (counts, and key fingerprints from the footers): our own check
    proved input = our predictions + our dead letters. Otherwise the date is reported incomplete."""
    col, date = tables.partition_column, c.part.date
    why = _differs_from_committed(tables, c, policy, preds)
    if why:
        raise CommitError(
            f"{col}={date} is incomplete: another run committed its predictions with this model and "
            f"inputs but not its dead letters, and this run's cannot stand in for them ({why}). Run the "
            "same command again: it scores the date again and commits both"
        )
    log.warning(
        "%s=%s: another run committed its predictions but not its dead letters (it stopped between the "
        "two commits): committing this run's %d dead-letter rows, the same rows, for it",
        col,
        date,
        sum(f.rows for f in c.dead),
    )
    from deltalake.exceptions import DeltaError

    _, dl_schema = _schemas(tables, c, policy.key_columns)
    try:
        dls = tables.dead_letters.open_or_create(dl_schema)
        check_schema(dls, dl_schema)
        return _commit_dead_letters(
            tables, dls, c, _arrow_schema(dls), generation, {"run_id": run.run_id, "attempt": run.attempt}
        )
    except (OSError, DeltaError) as e:
        raise StorageError(
            f"{col}={date} is incomplete: another run committed its predictions but not its dead letters, "
            f"and storage failed while this run committed them for it ({brief_error(e)}). Run the same "
            "command again: it scores the date again and commits both"
        ) from None


def _differs_from_committed(tables: OutputTables, c: _Checked, policy: CommitPolicy, preds) -> str | None:
    """Why the date's committed predictions are not the rows this run staged, or None."""
    col, date, loc = tables.partition_column, c.part.date, tables.predictions.location
    theirs = committed_files(loc, preds, col, date)
    rows = sum(f.rows for f in theirs), sum(f.rows for f in c.staged)
    if rows[0] != rows[1]:
        return f"{rows[0]} committed prediction rows, {rows[1]} scored by this run"
    if policy.top_k is None and policy.verify == "keys":
        keys = policy.key_columns
        if written_fingerprint(loc, theirs, keys) != written_fingerprint(loc, c.staged, keys):
            return "the committed predictions' keys are not this run's"
    return None


def withdraw_date(tables: OutputTables, date: str, run: RunIdentity, why: str) -> int | None:
    """Take `date` out of both tables (one commit each that removes its files and marks it
    withdrawn, so the next plan rescores it), when its current commit is still this attempt's:
    a date whose files changed after the commit must not stay published. Returns the predictions'
    new version, or None when another run has replaced the date since (nothing to withdraw)."""
    from deltalake.exceptions import CommitFailedError

    col = tables.partition_column
    preds = tables.predictions.open()
    generation = _committed_by_this_run(tables, preds, date, run)
    if generation is None:
        return None
    meta = {"date": date, "run_id": run.run_id, "attempt": run.attempt, "withdrawn": why, "output_rows": 0}
    args = (col, date, [], _arrow_schema(preds), generation + 1, None, meta, run.run_id, run.attempt)
    try:
        tables.predictions.commit_date(preds, *args, withdraw=True)
    except CommitFailedError:  # another run committed the date meanwhile: its files are not ours
        return None
    dls = tables.dead_letters.open()
    if dls is not None:  # the date's dead letters go with it (a rerun commits new ones)
        dl_args = (col, date, [], _arrow_schema(dls), generation + 1, None, meta, run.run_id, run.attempt)
        try:
            tables.dead_letters.commit_date(dls, *dl_args, withdraw=True)
        except CommitFailedError as e:
            log.warning("%s=%s: its dead letters could not be withdrawn: %s", col, date, e)
    return tables.predictions.version_of(preds, date, run.run_id, run.attempt)
