"""Per-date locks on the output, so two runs of the same date never mix their outputs.

A lock is a small JSON object, OUTPUT/_locks/<col>=<date>.json: run id, host, pid, heartbeat. The
holder refreshes it every ttl/4 seconds. Another run fails with a clear error while the lock is
alive; it takes the lock over when the heartbeat is older than the TTL (the holder died) or when
the holder was a process on this host that no longer exists (e.g. a SIGKILLed driver).

Object stores have no portable create-if-absent, so acquisition is write-then-verify: write our
lock, wait, read it back; a run that lost the race sees the other's id and stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from datetime import datetime, timezone

from pipeline.errors import UserError
from pipeline.storage import Location, exists, read_bytes

LOCK_DIR = "_locks"
_SETTLE_S = 0.5


class LockError(UserError):
    """Another live run holds a date of this run."""

    exit_code = 1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PartitionLocks:
    def __init__(self, output: Location, partition_column: str, dates: list[str], run_id: str, ttl_s: int):
        self.output = output
        self.locs = {d: output.join(LOCK_DIR, f"{partition_column}={d}.json") for d in dates}
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {"run_id": self.run_id, "host": self.host, "pid": os.getpid(), "heartbeat": time.time()}
        ).encode()

    def _read(self, loc: Location) -> dict | None:
        """The lock record, or None when there is none. Storage errors are retried (the S3
        client retries too; this covers what gets through it) and then raised: an unreadable
        lock must not count as a free one."""
        for attempt in range(5):
            try:
                return json.loads(read_bytes(loc)) if exists(loc) else None
            except (OSError, ValueError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        return None

    def _alive(self, rec: dict) -> bool:
        if time.time() - float(rec.get("heartbeat", 0)) > self.ttl_s:
            return False
        return not (rec.get("host") == self.host and not _pid_alive(int(rec.get("pid", -1))))

    def _write(self, loc: Location) -> None:
        # Plain overwrite (not temp+rename into the listing): the lock file is tiny.
        loc.fs.create_dir(loc.path.rsplit("/", 1)[0], recursive=True)
        with loc.fs.open_output_stream(loc.path) as f:
            f.write(self._record())

    def acquire(self) -> None:
        held = []
        for d, loc in self.locs.items():
            rec = self._read(loc)
            if rec and rec.get("run_id") != self.run_id and self._alive(rec):
                held.append(self._describe(d, rec))
        if held:
            raise LockError(
                "another run is scoring the same date(s); try again when it ends:\n  " + "\n  ".join(held)
            )
        for loc in self.locs.values():
            self._write(loc)
        time.sleep(_SETTLE_S)
        lost = []
        for d, loc in self.locs.items():
            rec = self._read(loc)
            if not rec or rec.get("run_id") != self.run_id:
                lost.append(self._describe(d, rec or {}))
        if lost:
            self.release()
            raise LockError(
                "another run started on the same date(s) at the same moment:\n  " + "\n  ".join(lost)
            )
        self._thread = threading.Thread(target=self._heartbeat, name="batchscore-lock", daemon=True)
        self._thread.start()

    def _describe(self, date: str, rec: dict) -> str:
        beat = rec.get("heartbeat")
        when = datetime.fromtimestamp(beat, timezone.utc).isoformat(timespec="seconds") if beat else "?"
        return f"{date}: run {rec.get('run_id')} on {rec.get('host')} pid {rec.get('pid')} (heartbeat {when})"

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl_s / 4)):
            for loc in self.locs.values():
                # a failed beat is retried by the next one; the TTL leaves room for several misses
                with contextlib.suppress(OSError):
                    self._write(loc)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for loc in self.locs.values():
            # best effort: a lock left behind is taken over once its heartbeat is stale
            with contextlib.suppress(OSError, ValueError):
                rec = self._read(loc)
                if rec and rec.get("run_id") == self.run_id:
                    loc.fs.delete_file(loc.path)

    def __enter__(self) -> PartitionLocks:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_RUN_STAMP = re.compile(r"-(\d{8}T\d{6}Z)-[0-9a-f]{6}$")


def live_run_ids(output: Location, ttl_s: int) -> set[str]:
    from pyarrow.fs import FileSelector, FileType

    probe = PartitionLocks(output, "ds", [], "", ttl_s)
    ids = set()
    lock_dir = output.join(LOCK_DIR)
    for info in output.fs.get_file_info(FileSelector(lock_dir.path, allow_not_found=True)):
        if info.type == FileType.File:
            try:
                rec = probe._read(Location(output.fs, info.path, info.path))
            except (OSError, ValueError):
                continue
            if rec and probe._alive(rec):
                ids.add(rec.get("run_id"))
    return ids


def clean_stale_staging(output: Location, staging_root: Location, ttl_s: int, keep: str) -> list[str]:
    """Remove staging directories of runs that are older than the lock TTL and hold no live
    lock (their runs died); returns the removed run ids."""
    from pyarrow.fs import FileSelector, FileType

    removed = []
    live = live_run_ids(output, ttl_s)
    infos = staging_root.fs.get_file_info(FileSelector(staging_root.path, allow_not_found=True))
    for info in infos:
        if info.type != FileType.Directory:
            continue
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        m = _RUN_STAMP.search(name)
        if not m or name == keep or name in live:
            continue
        started = datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        if (datetime.now(timezone.utc) - started).total_seconds() > ttl_s:
            staging_root.fs.delete_dir(info.path)
            removed.append(name)
    return removed
