"""A run's attempts: one process running one run id, with a record under the output that says who
it is, whether it still lives, and what it did.

Why: a scheduler retries a killed task with the same run id (Airflow, Argo and cron wrappers derive
it from the schedule, e.g. `nightly-2026-12-04`). If the files of two processes with one run id
could share names, a rerun would adopt or rewrite a killed process's files, or a live one's. So
every file a process writes carries its attempt id (`part-RUN.ATTEMPT.*`, `dl-RUN.ATTEMPT.*`), the
commit takes only the attempt's own files, and a process touches another attempt's files only once
it has proved that attempt dead.

The record: `OUTPUT/_runs/RUN/attempts/ATTEMPT.json`, written through pipeline/storage.py (local
disk and s3:// alike), rewritten every HEARTBEAT_S seconds while the attempt runs:

    {"version": 1, "run_id", "attempt", "job", "dates", "status": running | succeeded | failed |
     refused | dead, "started_at", "heartbeat_at", "ended_at" (epoch seconds, the writer's clock),
     "heartbeat_s", "stale_after_s", "host": {"hostname", "boot_id", "pid_ns", "pid", "pid_start"},
     "found_dead_by": ATTEMPT | null, "file_prefixes": {"part": ..., "dl": ...},
     "work": {"model", "units": [...], "unique_keys": {...}} (below)}

An attempt is dead when its record says it ended, when it ran on this machine (same host name, boot
and pid namespace) and its process is gone (pid and start time), or when its heartbeat is older than
STALE_AFTER_S (across machines, e.g. another node of a cluster over S3; clocks must agree to well
under that). A live attempt stops committing by itself once it could not refresh its heartbeat for
half that time, so a process that was paused and declared dead does not commit afterwards.

`work` is what a rerun may adopt (issue 22, pipeline/run/resume.py): `model`, the date identity's
model part (weights, scoring config) the work was scored with, and `units`, each unit of input the
attempt finished, appended and the record written at once as soon as the unit's files are closed
(a unit not in the record is never adopted):

    {"date", "inputs": [{"path", "size", "mtime_ns", "row_groups": [start, stop, of] | null,
                         "keys": the input key record's fingerprint | null}],
     "outputs": [{"path", "size", "rows", "keys"}], "dead_letters": [same],
     "adopted_from": "RUN.ATTEMPT" (only in an adopter's record: units it took over, so that a
                     live adopter's files are never deleted and a later rerun can adopt them again)}

and `unique_keys`, {"columns": [...], "dates": {date: digest of its input files}}: the dates whose
duplicate-key check found no repeated key, so that a rerun over the same input skips that read of
every key of the date."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import CommitError, RunIdInUseError, StorageError
from pipeline.reporting.runs import RUNS_DIR
from pipeline.storage import Location, list_files, read_bytes, write_bytes

log = logging.getLogger("batchscore")

ATTEMPTS_DIR = "attempts"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
ENDED = ("succeeded", "failed", "refused", "dead")


def new_attempt_id() -> str:
    """Unique per process: 12 hex digits of a random uuid (no '.', so file prefixes stay apart)."""
    return uuid.uuid4().hex[:12]


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc), '' where unknown: with the
    pid, it tells a process from a later one that got the same pid."""
    stat = _read_text(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""


@dataclass
class Host:
    """Where an attempt runs: enough to tell, on the same machine, whether its process lives."""

    hostname: str
    boot_id: str
    pid_ns: str
    pid: int
    pid_start: str

    @classmethod
    def this_process(cls) -> Host:
        try:
            pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            pid_ns = ""
        pid = os.getpid()
        boot = _read_text("/proc/sys/kernel/random/boot_id")
        return cls(socket.gethostname(), boot, pid_ns, pid, _pid_start(pid))

    def same_machine(self, other: Host) -> bool:
        """Same host name, boot and pid namespace: its pids are ours to look up (two containers
        with one host name differ by their pid namespace)."""
        return bool(self.boot_id and self.pid_ns) and (
            (self.hostname, self.boot_id, self.pid_ns) == (other.hostname, other.boot_id, other.pid_ns)
        )

    def process_gone(self) -> bool:
        """On this machine: the process is gone, or its pid now belongs to a later process."""
        if not self.pid_start:
            return False  # unknown start time: only the heartbeat can tell
        return _pid_start(self.pid) != self.pid_start


@dataclass
class AttemptRecord:
    run_id: str
    attempt: str
    job: str
    dates: list[str]
    host: Host
    started_at: float
    heartbeat_at: float
    status: str = "running"
    ended_at: float | None = None
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S
    found_dead_by: str | None = None
    file_prefixes: dict[str, str] = field(default_factory=dict)
    work: dict[str, Any] = field(default_factory=lambda: {"model": "", "units": []})
    version: int = 1

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AttemptRecord:
        doc = json.loads(raw)
        doc["host"] = Host(**doc["host"])
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})

    def why_live(self, me: Host, now: float) -> str | None:
        """Why this attempt must be taken as still running (None: it is dead or ended)."""
        if self.status in ENDED:
            return None
        if self.host.same_machine(me) and self.host.process_gone():
            return None
        age = now - self.heartbeat_at
        if age > self.stale_after_s:
            return None
        where = f"host {self.host.hostname}, pid {self.host.pid}"
        return f"attempt {self.attempt} is still running ({where}, last heartbeat {age:.0f} s ago)"


def attempts_dir(output: Location, run_id: str) -> Location:
    return output.join(RUNS_DIR, run_id, ATTEMPTS_DIR)


def read_attempts(output: Location, run_id: str) -> list[AttemptRecord]:
    """Every attempt record of the run (unreadable ones are skipped: written by another version)."""
    out = []
    for info in list_files(attempts_dir(output, run_id), suffix=".json", recursive=False):
        try:
            out.append(AttemptRecord.from_json(read_bytes(Location(output.fs, info.path, info.path))))
        except (OSError, ValueError, TypeError, KeyError):
            log.debug("unreadable attempt record %s", info.path)
    return out


class Attempt:
    """This process's attempt of a run: claimed before anything else is written, its record kept
    fresh by a heartbeat thread, ended with `held()`."""

    def __init__(self, output: Location, run_id: str, job: str, dates: list[str]) -> None:
        self.output, self.run_id = output, run_id
        self.id = new_attempt_id()
        now = time.time()
        self.record = AttemptRecord(run_id, self.id, job, list(dates), Host.this_process(), now, now)
        self.record.file_prefixes = {k: f"{k}-{run_id}.{self.id}." for k in ("part", "dl")}
        self.dead: list[AttemptRecord] = []  # earlier attempts of the run found dead at the claim
        self.lost: str | None = None  # why this attempt may no longer commit
        self.claimed = False  # its record is written (a run with nothing to score writes none)
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def location(self) -> Location:
        return attempts_dir(self.output, self.run_id).join(f"{self.id}.json")

    def _write(self, **changes: Any) -> None:
        """Apply `changes` to the record and write it, under one lock: the heartbeat thread and
        the end of the run write the same object, in the order they changed it."""
        with self._lock:
            for k, v in changes.items():
                setattr(self.record, k, v)
            write_bytes(self.location, self.record.to_json())

    def claim(self) -> Attempt:
        """Write this attempt's record, then read the others': another live one refuses this
        process (exit 5) before it writes anything else. Writing before reading means two
        processes started at once see each other at least one way: the one that sees the other
        is refused (both are, when each sees the other)."""
        try:  # the checks before the claim may have taken minutes: the heartbeat starts now
            self._write(heartbeat_at=time.time())
            self._last_beat, self.claimed = time.monotonic(), True
        except OSError as e:
            raise StorageError(f"cannot write the attempt record {self.location.uri}: {e}") from None
        others = [r for r in read_attempts(self.output, self.run_id) if r.attempt != self.id]
        now = time.time()
        live = [why for r in others if (why := r.why_live(self.record.host, now))]
        if live:
            self.end("refused")
            raise RunIdInUseError(
                f"--run-id {self.run_id}: another process is running this run id: {live[0]}; "
                "nothing was written. Two processes must not share a run id: wait for it to end "
                f"(a killed one counts as dead at once on the same machine, after {STALE_AFTER_S:.0f} s "
                "without a heartbeat elsewhere), or give each process its own --run-id"
            )
        self.dead = [r for r in others if r.status not in ENDED]
        for r in self.dead:
            self.mark_dead(r)
        self._thread = threading.Thread(target=self._beat_loop, name="batchscore-heartbeat", daemon=True)
        self._thread.start()
        return self

    def mark_dead(self, r: AttemptRecord) -> None:
        """Record that attempt `r` (of any run under the output) was found dead by this one."""
        r.status, r.found_dead_by = "dead", self.id
        with contextlib.suppress(OSError):  # a note for people: the liveness check does not need it
            write_bytes(attempts_dir(self.output, r.run_id).join(f"{r.attempt}.json"), r.to_json())
        log.info(
            "run %s: attempt %s (host %s) is dead: its uncommitted files go",
            self.run_id,
            r.attempt,
            r.host.hostname,
        )

    def record_units(self, units: list[dict[str, Any]], model: str | None = None, **work: Any) -> None:
        """Add finished units to the record's `work` (and set its other `work` keys) and write it
        now: from this write on, a rerun may adopt them (their files were closed before this call)."""
        if not self.claimed or not units and model is None and not work:
            return
        with self._lock:
            if model is not None:
                self.record.work["model"] = model
            self.record.work.update(work)
            self.record.work.setdefault("units", []).extend(units)
            try:
                write_bytes(self.location, self.record.to_json())
            except OSError as e:  # the next heartbeat writes them; until then they are not adoptable
                log.warning("run %s: attempt record not written: %s", self.run_id, e)

    def _beat(self) -> None:
        """Refresh the heartbeat, unless another attempt declared this one dead meanwhile."""
        mine = AttemptRecord.from_json(read_bytes(self.location))
        if mine.status != "running":
            self.lost = f"attempt {self.id} was declared dead by attempt {mine.found_dead_by}"
            return
        self._write(heartbeat_at=time.time())
        self._last_beat = time.monotonic()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.record.heartbeat_s) and self.lost is None:
            try:
                self._beat()
            except (OSError, ValueError) as e:  # a storage hiccup: check_lease decides
                log.warning("run %s: heartbeat not written: %s", self.run_id, e)

    def check_lease(self) -> None:
        """Before a commit: this attempt must still hold the run id. Past half the stale threshold
        without a heartbeat another process may have found it dead: it commits nothing more."""
        if self.lost is None and time.monotonic() - self._last_beat > STALE_AFTER_S / 2:
            with contextlib.suppress(OSError, ValueError):
                self._beat()
            if self.lost is None and time.monotonic() - self._last_beat > STALE_AFTER_S / 2:
                self.lost = (
                    f"attempt {self.id} could not refresh its heartbeat for over {STALE_AFTER_S / 2:.0f} s"
                )
        if self.lost is not None:
            raise CommitError(f"run {self.run_id}: {self.lost}; nothing more is committed by this process")

    def end(self, status: str) -> None:
        """Stop the heartbeat and record how the attempt ended (succeeded, failed, refused)."""
        self._stop.set()
        if not self.claimed:
            return
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self._write(status=status, ended_at=time.time())
        except OSError as e:  # the record stays 'running': its heartbeat ages, so it counts as dead
            log.warning("run %s: could not record the end of attempt %s: %s", self.run_id, self.id, e)

    @contextlib.contextmanager
    def held(self) -> Iterator[Attempt]:
        """The attempt for a block: its record says succeeded or failed when the block ends."""
        try:
            yield self
        except BaseException:
            self.end("failed")
            raise
        self.end("succeeded")
