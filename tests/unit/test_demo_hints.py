"""The demo's closing hints run as printed (here: the 'read it' command, with the interpreter that
ran the demo, which has deltalake; a bare `python` is often another environment)."""

from __future__ import annotations

import subprocess

import pyarrow as pa
from deltalake import write_deltalake

from jobs.demo import _how_to_read


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
