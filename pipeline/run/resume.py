"""Resume inside a date: a rerun adopts the finished units of attempts that died (issue 22).

Each attempt records a unit in its record's `work` (pipeline/run/attempt.py) once the unit's
prediction and dead-letter files are closed. A rerun of the same job (same model and scoring
config: `work.model`; any run id) reads the records of every run under the output, takes the
units of dead attempts (attempt.py's rules) for the dates it scores, and adopts a unit only when
every check passes:
  - its input files (or row-group ranges) are in this run's plan, unchanged (size, mtime_ns);
  - each written file (predictions and dead letters) exists with the recorded size, its footer's
    row count and key fingerprint are the recorded ones;
  - the unit reconciles by itself: input rows (and key fingerprint) = output + dead-letter rows;
  - every input file it touches is covered whole, exactly once, by adopted units.
Anything else is scored again. The adopter writes what it adopted into its own record before it
deletes anything, so a live adopter's files are never deleted by another rerun, and a rerun of
the adopter finds them again. The date's commit then takes the adopted files with the run's own
(pipeline/commit/partitions.py); two racers that adopted the same files still commit the date
once (the Delta log decides), and the loser never deletes files it did not write."""

from __future__ import annotations

import logging
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow.parquet as pq

from pipeline.filestats import stats_from_footer
from pipeline.keys import Fingerprint
from pipeline.reporting.runs import RUNS_DIR
from pipeline.run.attempt import ATTEMPTS_DIR, Attempt, AttemptRecord
from pipeline.stages.read import InputFile, InputPlan
from pipeline.storage import Location, list_files, read_bytes
from pipeline.tablefiles import TableFile, partition_values
from pipeline.unitwork import UnitNotes

log = logging.getLogger("batchscore")


@dataclass
class Adoption:
    """What a rerun adopts: the units (as recorded, with `adopted_from`), their files per date and
    table kind, the input files they cover, and the paths no one may delete now."""

    units: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, list[TableFile]]] = field(default_factory=dict)  # date -> part/dl -> files
    inputs: set[str] = field(default_factory=set)
    rows: int = 0
    refused: list[str] = field(default_factory=list)
    # attempts found dead now (their record still said running) that worked on these dates: their
    # files not adopted go; one already marked dead was dealt with by whoever marked it
    dead: list[AttemptRecord] = field(default_factory=list)
    keep: set[str] = field(default_factory=set)  # fs paths: adopted here, or by a live attempt
    # key columns -> date -> digest of its input files: dates a dead attempt found free of repeated keys
    unique_keys: dict[tuple[str, ...], dict[str, str]] = field(default_factory=dict)

    def known_unique(self, key_columns: list[str], digests: dict[str, str]) -> set[str]:
        """The dates (`digests`: date -> digest of its input files now) a dead attempt checked for
        repeated keys over the very same input files, and found none."""
        known = self.unique_keys.get(tuple(key_columns), {})
        return {d for d, digest in digests.items() if known.get(d) == digest}

    def adopted(self, date: str, kind: str) -> list[TableFile]:
        return list(self.files.get(date, {}).get(kind, []))


def all_attempts(output: Location) -> list[AttemptRecord]:
    """Every readable attempt record of every run under the output (one recursive listing)."""
    infos = [
        i
        for i in list_files(output.join(RUNS_DIR), suffix=".json")
        if posixpath.basename(posixpath.dirname(i.path)) == ATTEMPTS_DIR
    ]

    def load(info) -> AttemptRecord | None:
        try:
            return AttemptRecord.from_json(read_bytes(Location(output.fs, info.path, info.path)))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [r for r in pool.map(load, infos) if r is not None]


def unit_paths(unit: dict[str, Any]) -> list[str]:
    return [f["path"] for f in unit.get("outputs", []) + unit.get("dead_letters", [])]


def find_adoption(
    me: Attempt, model: str, inputs: InputPlan, preds: Location, dead_letters: Location
) -> Adoption:
    """The units of dead attempts this run can adopt for the dates of `inputs`, checked."""
    out = Adoption()
    dates = {p.date for p in inputs.partitions}
    now = time.time()
    records = [r for r in all_attempts(me.output) if r.attempt != me.id]
    sources: list[AttemptRecord] = []  # dead attempts (running ones found dead now, or marked dead)
    for r in records:
        if r.status in ("succeeded", "failed", "refused"):
            continue
        units = [u for u in (r.work or {}).get("units", []) if u.get("date") in dates]
        if r.why_live(me.record.host, now) is not None:
            out.keep.update(p for u in units for p in unit_paths(u))  # never deleted under it
        elif units or set(r.dates) & dates:
            sources.append(r)
    out.dead = [r for r in sources if r.status == "running"]
    for r in sources:
        seen = (r.work or {}).get("unique_keys") or {}
        out.unique_keys.setdefault(tuple(seen.get("columns", [])), {}).update(seen.get("dates", {}))
    candidates = [
        (r, u)
        for r in sorted(sources, key=lambda r: -r.heartbeat_at)
        if (r.work or {}).get("model") == model
        for u in r.work.get("units", [])
        if u.get("date") in dates
    ]
    plan = {f.path: (f, p.date) for p in inputs.partitions for f in p.files}
    chosen = _choose(candidates, plan, out.refused)
    checked = _check_files(chosen, plan, preds, dead_letters, out.refused)
    for r, u, files in _whole_inputs(checked, plan, out.refused):
        src = u.get("adopted_from") or f"{r.run_id}.{r.attempt}"
        out.units.append({**u, "adopted_from": src})
        for kind, tf in files:
            out.files.setdefault(u["date"], {}).setdefault(kind, []).append(tf)
        out.inputs.update(i["path"] for i in u["inputs"])
    out.rows = sum(plan[p][0].rows for p in out.inputs)
    out.keep.update(p for u in out.units for p in unit_paths(u))
    return out


def _ranges(u: dict[str, Any], plan: dict) -> list[tuple[str, int, int]]:
    """(path, first, stop) row groups of each input piece of a unit."""
    out = []
    for i in u["inputs"]:
        groups = i.get("row_groups")
        of = plan[i["path"]][0].row_groups if i["path"] in plan else 1
        out.append((i["path"], *(groups[:2] if groups else (0, of))))
    return out


def _choose(candidates: list, plan: dict, refused: list[str]) -> list:
    """Units whose inputs are unchanged in this run's plan, newest attempt first, none
    overlapping another chosen one (an adopter's record repeats the units it adopted)."""
    taken: dict[str, list[tuple[int, int]]] = {}
    chosen = []
    for r, u in candidates:
        why = _input_changed(u, plan)
        if why:
            refused.append(f"{r.run_id}.{r.attempt}: {why}")
            continue
        ranges = _ranges(u, plan)
        if any(a < e and s < b for p, a, b in ranges for s, e in taken.get(p, [])):
            continue
        for p, a, b in ranges:
            taken.setdefault(p, []).append((a, b))
        chosen.append((r, u))
    return chosen


def _input_changed(u: dict[str, Any], plan: dict) -> str | None:
    for i in u.get("inputs", []):
        f: InputFile | None = plan.get(i["path"], (None, None))[0]
        if f is None:
            return f"{i['path']} is not in this run's input"
        if (f.size, f.mtime_ns) != (i.get("size"), i.get("mtime_ns")):
            return f"{i['path']} changed since it was scored (size, mtime)"
        groups = i.get("row_groups")
        if groups is not None and groups[2] != f.row_groups:
            return f"{i['path']} has other row groups than when it was scored"
    return None if u.get("inputs") else "a unit without inputs"


def _check_files(chosen: list, plan: dict, preds: Location, dls: Location, refused: list[str]) -> list:
    """(record, unit, [(kind, TableFile)]) of the chosen units whose files are as recorded and
    whose rows (and keys) reconcile with their input."""

    def check(item):
        r, u = item
        files, why = [], None
        for kind, root, entries in (
            ("part", preds, u.get("outputs", [])),
            ("dl", dls, u.get("dead_letters", [])),
        ):
            for e in entries:
                tf, why = _table_file(root, e)
                if why:
                    return r, u, None, why
                files.append((kind, tf))
        why = _unit_unreconciled(u, plan)
        return r, u, (None if why else files), why

    out = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        for r, u, files, why in pool.map(check, chosen):
            if why:
                refused.append(f"{r.run_id}.{r.attempt}: {why}")
            else:
                out.append((r, u, files))
    return out


def _fp(keys: dict[str, Any] | None) -> Fingerprint | None:
    if not keys:
        return None
    return Fingerprint(int(keys["rows"]), int(keys["s1"], 16), int(keys["s2"], 16))


def _table_file(root: Location, e: dict[str, Any]) -> tuple[TableFile | None, str | None]:
    """The written file as a TableFile, or why it is not what the record says."""
    path = e["path"]
    rel = posixpath.relpath(path, root.path)
    if rel.startswith(".."):
        return None, f"{path} is not under {root.uri}"
    try:
        info = root.fs.get_file_info(path)
        if info.size is None:
            return None, f"{path} is gone"
        if info.size != e["size"]:
            return None, f"{path} has {info.size} bytes, {e['size']} recorded"
        with root.fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
    except Exception as err:  # noqa: BLE001 - unreadable in any way: scored again
        return None, f"{path} cannot be read ({type(err).__name__})"
    stats = stats_from_footer(md)
    if md.num_rows != e["rows"] or stats is None:
        return None, f"{path}: its footer does not say {e['rows']} rows with key stats"
    want = _fp(e.get("keys"))
    if want is not None and stats.fingerprint != want:
        return None, f"{path}: its key fingerprint is not the recorded one"
    mtime = int(info.mtime.timestamp() * 1000) if info.mtime is not None else 0
    return TableFile(rel, info.size, md.num_rows, mtime, partition_values(rel), stats), None


def _unit_unreconciled(u: dict[str, Any], plan: dict) -> str | None:
    """Why the unit's input does not equal its outputs plus dead letters (rows, keys). Without
    input key records (output.verify other than keys) whole files are checked by rows only."""
    written = u.get("outputs", []) + u.get("dead_letters", [])
    out_rows = sum(e["rows"] for e in written)
    fps = [_fp(i.get("keys")) for i in u["inputs"]]
    if any(fp is None for fp in fps):
        if any(i.get("row_groups") is not None for i in u["inputs"]):
            return "a row-group range without a recorded key fingerprint"
        rows = sum(plan[i["path"]][0].rows for i in u["inputs"])
        return None if rows == out_rows else f"{rows} input rows but {out_rows} written"
    fp_in = sum(fps, Fingerprint())
    if fp_in.rows != out_rows:
        return f"{fp_in.rows} input rows but {out_rows} written"
    fp_out = sum((_fp(e.get("keys")) or Fingerprint() for e in written), Fingerprint())
    return None if fp_in == fp_out else "its written keys are not its input's"


def _whole_inputs(checked: list, plan: dict, refused: list[str]) -> list:
    """The checked units, less those touching an input file that the adopted units do not cover
    whole, exactly once (repeated: dropping a unit can uncover another file)."""
    units = list(checked)
    while True:
        cover: dict[str, list[tuple[int, int]]] = {}
        for _, u, _ in units:
            for p, a, b in _ranges(u, plan):
                cover.setdefault(p, []).append((a, b))
        whole = {p for p, rs in cover.items() if _covers(sorted(rs), plan[p][0].row_groups)}
        keep = [x for x in units if all(i["path"] in whole for i in x[1]["inputs"])]
        if len(keep) == len(units):
            return keep
        kept = {id(x) for x in keep}
        for r, _, _ in (x for x in units if id(x) not in kept):
            refused.append(f"{r.run_id}.{r.attempt}: a part of its input file was not finished")
        units = keep


def _covers(ranges: list[tuple[int, int]], of: int) -> bool:
    """Sorted ranges [a, b) that tile [0, of) with no gap and no overlap."""
    at = 0
    for a, b in ranges:
        if a != at:
            return False
        at = b
    return at == of


def unit_entry(pieces: list[tuple[InputFile, str, Any]], notes: UnitNotes) -> dict[str, Any]:
    """A finished unit as its attempt records it: its input pieces (each with the key record its
    read made, when one was), and the prediction and dead-letter files it wrote, all closed."""
    recorded = {(tuple(k["files"]), tuple(k["row_groups"] or ())): k["keys"] for k in notes.input_keys}
    inputs = []
    for f, _, groups in pieces:
        span = None if groups is None else [groups.start, groups.stop, f.row_groups]
        keys = recorded.get(((f.path,), tuple(span or ())))
        inputs.append(
            {"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "row_groups": span, "keys": keys}
        )
    return {
        "date": pieces[0][1],
        "inputs": inputs,
        "outputs": list(notes.outputs),
        "dead_letters": list(notes.dead_letters),
    }


def remaining(inputs: InputPlan, adopted: set[str]) -> InputPlan:
    """The input plan less the adopted files: what this run scores itself."""
    parts = [replace(p, files=[f for f in p.files if f.path not in adopted]) for p in inputs.partitions]
    return InputPlan(inputs.root, inputs.partition_column, [p for p in parts if p.files], inputs.skipped)
