"""Resume's record and checks (pipeline/unitwork.py, pipeline/run/resume.py) on real files on
local disk: what a unit notes while it writes, and which recorded units a rerun adopts."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from pipeline.filestats import write_parquet
from pipeline.keys import fingerprint_of
from pipeline.run import resume
from pipeline.run.attempt import Attempt, AttemptRecord, Host
from pipeline.stages.read import InputFile, InputPartition, InputPlan
from pipeline.storage import resolve
from pipeline.unitwork import noting

DATE = "2026-10-01"
KEYS = ["event_id"]


def _rows(start: int, n: int) -> pa.Table:
    return pa.table({"event_id": [f"e{i}" for i in range(start, start + n)], "score": [0.5] * n})


def _keys(table: pa.Table) -> dict:
    fp = fingerprint_of(table, KEYS)
    return {"key_columns": KEYS, "hash": "x", "rows": fp.rows, "s1": f"{fp.s1:x}", "s2": f"{fp.s2:x}"}


def test_a_unit_notes_the_files_it_closed_and_nothing_outside_noting(tmp_path):
    fs = resolve(str(tmp_path)).fs
    with noting() as notes:
        write_parquet(fs, str(tmp_path / "part-r.a.local-0.parquet"), _rows(0, 10), KEYS)
        write_parquet(fs, str(tmp_path / "dl-r.a.x-0.parquet"), _rows(10, 2), KEYS)
    write_parquet(fs, str(tmp_path / "part-r.a.local-1.parquet"), _rows(20, 5), KEYS)
    (out,), (dl,) = notes.outputs, notes.dead_letters
    assert out["size"] == os.path.getsize(tmp_path / "part-r.a.local-0.parquet") and out["rows"] == 10
    assert dl["rows"] == 2 and int(dl["keys"]["s1"], 16) == fingerprint_of(_rows(10, 2), KEYS).s1


def _unit(tmp_path, name: str, start: int, n: int, dead: int = 0) -> tuple[dict, InputFile]:
    """An input file of `n` rows, and a unit that scored it into predictions + dead letters."""
    fs = resolve(str(tmp_path)).fs
    src = tmp_path / "in" / f"ds={DATE}" / f"{name}.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    table = _rows(start, n)
    write_parquet(fs, str(src), table, KEYS)
    st = src.stat()
    f = InputFile(str(src), str(src), st.st_size, n, table.schema, st.st_mtime_ns, 1)
    with noting() as notes:
        pred_dir, dl_dir = tmp_path / "out" / f"ds={DATE}", tmp_path / "out" / "_dead_letter" / f"ds={DATE}"
        pred_dir.mkdir(parents=True, exist_ok=True)
        dl_dir.mkdir(parents=True, exist_ok=True)
        write_parquet(fs, str(pred_dir / f"part-old.dead0.{name}.parquet"), table.slice(0, n - dead), KEYS)
        if dead:
            write_parquet(fs, str(dl_dir / f"dl-old.dead0.{name}.parquet"), table.slice(n - dead), KEYS)
    notes.input_keys.append({"files": [f.path], "row_groups": None, "keys": _keys(table)})
    return resume.unit_entry([(f, DATE, None)], notes), f


def _dead_record(tmp_path, units: list[dict], model: str = "m", status: str = "dead") -> None:
    """An attempt of run `old` on another host: marked dead, or still 'running' with its heartbeat
    long stale (found dead now)."""
    host = Host("elsewhere", "boot", "ns", 1, "1")
    rec = AttemptRecord("old", "dead0", "job", [DATE], host, 0.0, 0.0, status=status)
    rec.work = {"model": model, "units": units}
    path = tmp_path / "out" / "_runs" / "old" / "attempts" / "dead0.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rec.to_json())


def _adopt(tmp_path, files: list[InputFile], model: str = "m") -> resume.Adoption:
    out = resolve(str(tmp_path / "out"))
    me = Attempt(out, "new", "job", [DATE])
    plan = InputPlan(resolve(str(tmp_path / "in")), "ds", [InputPartition(DATE, "", files)])
    return resume.find_adoption(me, model, plan, out, out.join("_dead_letter"))


def test_finished_units_are_adopted_with_their_dead_letters(tmp_path):
    a, fa = _unit(tmp_path, "a", 0, 10, dead=2)
    b, fb = _unit(tmp_path, "b", 10, 10)
    _dead_record(tmp_path, [a, b], status="running")
    got = _adopt(tmp_path, [fa, fb])
    assert got.rows == 20 and got.inputs == {fa.path, fb.path} and not got.refused
    assert sorted(f.rows for f in got.adopted(DATE, "part")) == [8, 10]
    assert [f.rows for f in got.adopted(DATE, "dl")] == [2]
    assert {u["adopted_from"] for u in got.units} == {"old.dead0"}
    assert [r.attempt for r in got.dead] == ["dead0"]  # found dead now: its other files go


def test_an_attempt_already_marked_dead_is_adopted_from_but_not_discarded_again(tmp_path):
    a, fa = _unit(tmp_path, "a", 0, 10)
    _dead_record(tmp_path, [a], status="dead")
    got = _adopt(tmp_path, [fa])
    assert got.inputs == {fa.path} and got.dead == []


@pytest.mark.parametrize("spoil", ["deleted", "truncated", "input changed", "other model", "keys"])
def test_a_spoiled_unit_is_scored_again(tmp_path, spoil):
    a, fa = _unit(tmp_path, "a", 0, 10)
    b, fb = _unit(tmp_path, "b", 10, 10)
    path = a["outputs"][0]["path"]
    if spoil == "deleted":
        os.remove(path)
    elif spoil == "truncated":
        with open(path, "r+b") as f:
            f.truncate(50)
    elif spoil == "input changed":
        os.utime(fa.path, ns=(fa.mtime_ns, fa.mtime_ns + 10**9))
        fa = InputFile(fa.path, fa.uri, fa.size, fa.rows, fa.schema, fa.mtime_ns + 10**9, 1)
    elif spoil == "keys":  # a unit whose written keys are not its input's (a duplicated row)
        a["inputs"][0]["keys"] = _keys(_rows(100, 10))
    _dead_record(tmp_path, [a, b], model="m")
    got = _adopt(tmp_path, [fa, fb], model="other" if spoil == "other model" else "m")
    if spoil == "other model":
        assert got.rows == 0 and not got.units
        return
    assert got.inputs == {fb.path}, got.refused
    assert len(got.refused) == 1


def test_a_file_split_into_ranges_is_adopted_only_whole():
    plan = {"f": (InputFile("f", "f", 1, 40, pa.schema([]), 0, 4), DATE)}

    def unit(a: int, b: int) -> dict:
        return {"inputs": [{"path": "f", "row_groups": [a, b, 4]}]}

    chosen = [(None, unit(0, 2), []), (None, unit(2, 4), [])]
    assert len(resume._whole_inputs(chosen, plan, [])) == 2

    class R:
        run_id, attempt = "r", "a"

    refused: list[str] = []
    assert resume._whole_inputs([(R, unit(0, 2), [])], plan, refused) == [] and refused
    assert resume._covers([(0, 2), (2, 4)], 4) and not resume._covers([(0, 2), (1, 4)], 4)


def test_the_record_keeps_units_in_its_work(tmp_path):
    out = resolve(str(tmp_path))
    me = Attempt(out, "run", "job", [DATE]).claim()
    try:
        me.record_units([{"date": DATE, "inputs": [], "outputs": [], "dead_letters": []}], model="m")
        doc = json.loads((tmp_path / "_runs" / "run" / "attempts" / f"{me.id}.json").read_text())
        assert doc["work"]["model"] == "m" and len(doc["work"]["units"]) == 1
    finally:
        me.end("succeeded")


def test_a_live_attempts_units_are_kept_and_never_adopted(tmp_path):
    import time

    a, fa = _unit(tmp_path, "a", 0, 10)
    host = Host("elsewhere", "boot", "ns", 1, "1")
    rec = AttemptRecord("busy", "live0", "job", [DATE], host, time.time(), time.time())
    rec.work = {"model": "m", "units": [{**a, "adopted_from": "old.dead0"}]}
    path = tmp_path / "out" / "_runs" / "busy" / "attempts" / "live0.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(rec.to_json())
    got = _adopt(tmp_path, [fa])
    assert not got.units and got.dead == []
    assert set(resume.unit_paths(a)) <= got.keep  # another rerun's discard never deletes them
