"""Attempt records (pipeline/run/attempt.py): who runs a run id, and whether it still lives, on
one machine (its process) and across machines (its heartbeat), on local disk and the S3 server."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.config import StorageConfig
from pipeline.errors import CommitError, RunIdInUseError
from pipeline.run import attempt as attempts
from pipeline.run.attempt import Attempt, AttemptRecord, Host, read_attempts
from pipeline.storage import resolve, write_bytes


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def output(request, tmp_path):
    if request.param == "local":
        return resolve(str(tmp_path / "out"))
    s3 = request.getfixturevalue("s3")
    bucket = s3.make_bucket(f"attempts-{time.time_ns()}")
    return resolve(f"s3://{bucket}/out", StorageConfig(endpoint_url=s3.endpoint))


def _foreign(output, run_id: str, heartbeat_age_s: float, host: Host | None = None) -> AttemptRecord:
    """The record of an attempt on another machine whose last heartbeat is `heartbeat_age_s` old."""
    now = time.time()
    host = host or Host("other-node", "boot-x", "4026531836", 1234, "999")
    rec = AttemptRecord(run_id, "0123456789ab", "job", ["2026-10-01"], host, now - 600, now - heartbeat_age_s)
    write_bytes(attempts.attempts_dir(output, run_id).join(f"{rec.attempt}.json"), rec.to_json())
    return rec


def test_a_fresh_heartbeat_on_another_machine_refuses_the_run_id(output):
    _foreign(output, "r1", heartbeat_age_s=5)
    with pytest.raises(
        RunIdInUseError, match=r"--run-id r1: .*attempt 0123456789ab is still running \(host other-node"
    ):
        Attempt(output, "r1", "job", ["2026-10-01"]).claim()
    statuses = sorted(r.status for r in read_attempts(output, "r1"))
    assert statuses == ["refused", "running"]  # the refused one says so; the live one untouched


def test_a_stale_heartbeat_on_another_machine_is_dead_and_marked(output):
    _foreign(output, "r2", heartbeat_age_s=attempts.STALE_AFTER_S + 5)
    mine = Attempt(output, "r2", "job", ["2026-10-01"]).claim()
    with mine.held():
        assert [r.attempt for r in mine.dead] == ["0123456789ab"]
    by_id = {r.attempt: r for r in read_attempts(output, "r2")}
    assert by_id["0123456789ab"].status == "dead" and by_id["0123456789ab"].found_dead_by == mine.id
    assert by_id[mine.id].status == "succeeded"


def test_a_killed_process_on_this_machine_is_dead_at_once_and_a_live_one_is_not(tmp_path):
    output = resolve(str(tmp_path / "out"))
    me = Host.this_process()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _foreign(output, "r3", heartbeat_age_s=1, host=Host(me.hostname, me.boot_id, me.pid_ns, gone.pid, "1"))
    with Attempt(output, "r3", "job", []).claim().held() as mine:
        assert len(mine.dead) == 1  # a fresh heartbeat, but its process is gone

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        host = Host(me.hostname, me.boot_id, me.pid_ns, live.pid, attempts._pid_start(live.pid))
        _foreign(output, "r4", heartbeat_age_s=1, host=host)
        with pytest.raises(RunIdInUseError, match=f"pid {live.pid}"):
            Attempt(output, "r4", "job", []).claim()
    finally:
        live.kill()


def test_a_second_attempt_while_the_first_holds_the_run_id_is_refused_and_an_ended_one_is_not(output):
    first = Attempt(output, "r5", "job", []).claim()
    with first.held(), pytest.raises(RunIdInUseError):
        Attempt(output, "r5", "job", []).claim()
    with Attempt(output, "r5", "job", []).claim().held() as again:
        assert again.dead == [] and again.id != first.id


def test_an_attempt_declared_dead_commits_nothing_more(tmp_path, monkeypatch):
    output = resolve(str(tmp_path / "out"))
    mine = Attempt(output, "r6", "job", []).claim()
    rec = AttemptRecord.from_json(mine.location.fs.open_input_stream(mine.location.path).read())
    rec.status, rec.found_dead_by = "dead", "ffffffffffff"
    write_bytes(mine.location, rec.to_json())
    monkeypatch.setattr(mine, "_last_beat", time.monotonic() - attempts.STALE_AFTER_S)  # a long pause
    with pytest.raises(CommitError, match="declared dead by attempt ffffffffffff"), mine.held():
        mine.check_lease()
