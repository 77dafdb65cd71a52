"""What the demo shows the user: its closing hints run as printed (the 'read it' command, with the
interpreter that ran the demo, which has deltalake; a bare `python` is often another
environment), and Ray's notes to operators do not bury its output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from jobs.demo import _how_to_read

REPO = Path(__file__).resolve().parents[2]


def test_read_it_hint_runs_as_printed(tmp_path, capsys, monkeypatch):
    table = tmp_path / "predictions"
    write_deltalake(
        str(table), pa.table({"event_id": ["a", "b"], "ds": ["2026-11-04"] * 2}), partition_by=["ds"]
    )
    monkeypatch.chdir(tmp_path)
    _how_to_read(str(table), "2026-11-04")
    line = next(x for x in capsys.readouterr().out.splitlines() if "read it:" in x)
    command = line.split("read it:", 1)[1].strip()
    assert not command.startswith("python "), command
    # a PATH without any python: only the printed interpreter can run it
    proc = subprocess.run(
        command,
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/nonexistent"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "event_id" in proc.stdout


def _unset_for_this_test(monkeypatch, *names: str) -> None:
    """The variables unset, and whatever the code under test sets them to undone after the test:
    `monkeypatch.delenv` of an unset variable records nothing to restore, and `_quiet_ray`'s
    RAY_AUTH_MODE=token then reached the later tests' Ray clusters (their start failed with
    InvalidAuthToken when tests/unit ran before tests/integration)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_demo_quiets_ray_for_a_ray_it_starts(monkeypatch):
    """The top-K demo printed Ray's token-authentication notice and Ray Data's plans and progress
    logs under its own output. Asking for token authentication explicitly (Ray's default for a
    new local cluster) drops the notice, not the authentication."""
    import logging

    from jobs.demo import _quiet_ray
    from pipeline.config import load_config

    cfg = load_config(REPO / "configs" / "demo.yaml")
    _unset_for_this_test(monkeypatch, "RAY_AUTH_MODE", "RAY_ADDRESS")
    level = logging.getLogger("ray.data").level
    try:
        _quiet_ray(cfg)
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert logging.getLogger("ray.data").level == logging.ERROR
    finally:
        logging.getLogger("ray.data").setLevel(level)


def test_demo_leaves_a_cluster_it_joins_as_it_is(monkeypatch):
    from jobs.demo import _quiet_ray
    from pipeline.config import load_config

    _unset_for_this_test(monkeypatch, "RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    _quiet_ray(load_config(REPO / "configs" / "demo.yaml"))
    assert "RAY_AUTH_MODE" not in os.environ
