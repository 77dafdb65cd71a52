"""Commit each date of a multi-date run as soon as all of its rows are staged.

A backfill scores many dates in one streaming Ray Data run (the model stays loaded, no start-up
per date). A driver thread watches the run's files under the output tables: once the written
prediction rows plus the dead-letter rows of the earliest uncommitted date add up to its input
rows (files count only when their Parquet footer is readable, i.e. complete), that date is
profiled, drift-checked and committed with the same checks as at the end of a run (key
reconciliation included), while the pipeline goes on with the next dates. A backfill killed
midway keeps every date committed so far.

Dates are committed in date order (a later date that completes first waits), so each date's drift
check sees the date before it. When the pipeline ends, `drain` commits the remaining dates the
same way, in order, up to the first one that fails a check (keys differ, too many bad rows, drift
with on_breach=fail): that date and the later ones are left to the end-of-run commit, which
reports why and publishes none of them. So a run publishes exactly the dates before its first
failing date, whatever the timing."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from pipeline.commit.partitions import CommitPolicy, DateCommit, RunIdentity, commit_partitions
from pipeline.commit.tables import OutputTables, WrittenRows, run_file_prefix
from pipeline.config import DriftConfig
from pipeline.errors import CommitConflictError, CommitError
from pipeline.quality.drift import commit_profiles, drift_reasons, evaluate_heads
from pipeline.quality.profiles import profile_partitions
from pipeline.stages.read import InputPartition, InputPlan
from pipeline.storage import Location

log = logging.getLogger("batchscore")


def subset(inputs: InputPlan, dates: list[str]) -> InputPlan:
    """The input plan restricted to `dates` (with their skipped files)."""
    keep = set(dates)
    return InputPlan(
        inputs.root,
        inputs.partition_column,
        [p for p in inputs.partitions if p.date in keep],
        [s for s in inputs.skipped if s.get("date") in keep],
    )


@dataclass
class DateCommitter:
    tables: OutputTables
    inputs: InputPlan
    run: RunIdentity
    policy: CommitPolicy
    drift_cfg: DriftConfig
    value_columns: list[str] | str  # the output columns profiled and drift-checked (one per head)
    references: dict[str, dict] | None  # head -> the checkpoint's training profile
    committed_profiles: dict[str, tuple[str, dict[str, dict]]] = field(default_factory=dict)  # from the log
    interval_s: float = 2.0
    early: bool = True  # False: no date commits before the pipeline ends (drain leaves them all)
    commits: list[DateCommit] = field(default_factory=list)
    profiles: dict[str, dict] = field(default_factory=dict)
    drift: dict[str, dict] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # date -> why it was left to the final commit
    during_run: list[str] = field(default_factory=list)  # committed while the pipeline still ran

    def __post_init__(self) -> None:
        if isinstance(self.value_columns, str):
            self.value_columns = [self.value_columns]
        self.references = self.references or {}
        self._pending: list[InputPartition] = sorted(self.inputs.partitions, key=lambda p: p.date)
        self._counters: dict[str, WrittenRows] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.conflict: CommitConflictError | None = None

    @property
    def committed(self) -> list[str]:
        """Dates done: committed by this run, or found committed as asked by another run."""
        return [c.date for c in self.commits]

    @property
    def published(self) -> list[str]:
        """Dates this run's own commits published (what its messages may call committed)."""
        return [c.date for c in self.commits if c.outcome == "committed"]

    def _rows(self, loc: Location, kind: str) -> int:
        """Rows in this run's complete Parquet files under `loc` (footers read once per file)."""
        if loc.path not in self._counters:
            # this attempt's files only: another process with the same run id writes its own
            self._counters[loc.path] = WrittenRows(
                loc, run_file_prefix(self.run.run_id, kind, self.run.attempt)
            )
        return self._counters[loc.path]()

    def _staged_rows(self, date: str) -> int:
        col = self.inputs.partition_column
        adopted = sum(f.rows for kind in ("part", "dl") for f in self.run.adopted_files(date, kind))
        return (
            adopted
            + self._rows(self.tables.location.join(f"{col}={date}"), "part")
            + self._rows(self.tables.dead_letters.location.join(f"{col}={date}"), "dl")
        )

    def step(self, drain: bool = False) -> None:
        """Commit every leading date whose rows are all staged (`drain`: also after stop())."""
        col = self.inputs.partition_column
        while self.early and self._pending and (drain or not self._stop.is_set()):
            part = self._pending[0]
            if part.date in self.held or self._staged_rows(part.date) != part.rows:
                return
            profile = profile_partitions(
                self.tables.location,
                col,
                [part.date],
                self.value_columns,
                self.run.run_id,
                self.run.attempt,
                adopted={part.date: self.run.adopted_files(part.date, "part")},
            )
            profiles = {**self.profiles, **profile}
            drift = evaluate_heads(
                self.drift_cfg,
                self.committed_profiles,
                col,
                profiles,
                list(self.value_columns),
                self.run.model_sha256,
                self.references,
                only=[part.date],
            )[part.date]
            if drift["breach"] and self.drift_cfg.on_breach == "fail":
                self.held[part.date] = "score drift with drift.on_breach=fail"
                return
            try:
                commits = commit_partitions(
                    self.tables,
                    subset(self.inputs, [part.date]),
                    self.run,
                    self.policy,
                    extra={part.date: commit_profiles(profile[part.date], drift)},
                )
            except CommitError as e:
                self.held[part.date] = str(e)
                return
            for line in drift_reasons({part.date: drift}, col):
                log.warning("score drift: %s", line)
            self.profiles[part.date] = profile[part.date]
            self.drift[part.date] = drift
            self.commits.extend(commits)
            self._pending.pop(0)
            if not drain:
                self.during_run.append(part.date)
            self._log_commit(commits[0], drain)

    def _log_commit(self, commit: DateCommit, drain: bool) -> None:
        """Say what the commit did: only a commit that landed is 'committed' (another run's commit
        of the same date found first is a no-op of this run's)."""
        col, when = self.inputs.partition_column, "" if drain else " while the run goes on"
        if commit.outcome == "committed":
            log.info("committed %s=%s%s (%d rows)", col, commit.date, when, commit.input_rows)
        else:
            log.info("%s=%s: %s, nothing committed by this run%s", col, commit.date, commit.outcome, when)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except CommitConflictError as e:  # another run committed a date first: the run stops
                self.conflict = e
                return
            except OSError as e:  # storage hiccup: the next poll tries again
                log.warning("early commit failed, retrying: %s", e)
                continue
            except Exception as e:  # an early commit is an optimization: the final commit decides
                log.warning("early commit paused: %s", e)
                return

    def start(self) -> DateCommitter:
        if self.early and len(self._pending) > 1:  # one date: the end-of-run commit is as early
            self._thread = threading.Thread(target=self._loop, name="batchscore-commit", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(Exception):
                self._thread.join()

    def drain(self) -> None:
        """After the pipeline: commit, in date order, every date that passes, up to the first one
        that does not (it and the later dates are left to the caller's final commit, which
        reports why). Which dates are published does not depend on how far the thread got."""
        self.stop()
        if self.conflict is not None:
            raise self.conflict
        self.step(drain=True)

    def summary(self) -> dict[str, Any]:
        return {
            "committed": self.committed,
            "committed_during_run": list(self.during_run),
            "held_for_final_commit": dict(self.held),
        }
