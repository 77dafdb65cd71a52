"""The Ray runner's scoring replicas: each replica takes a work unit (an input file, or a range of
a big file's row groups) through the whole path in its own process: read (and the input's key
record), preprocessing, the forward pass, and the write of the unit's prediction files.

Why not a Ray Data stage per step (read tasks -> preprocess tasks -> a pool of predictor actors ->
write tasks), the shape Ray's docs show: every row then crosses the object store three times, and
one replica per GPU does all the host-side work of its GPU (Arrow to tensors, copies, output
columns) on one CPU. Measured on an H200 with 16 CPUs (issue 20): 2.25 M rows/s over 128 M rows,
the GPU 3 % busy, the replica's CPU the cap. Here the only things that move between processes are
the units' descriptions going in and a small record per unit coming out, and several replicas
share each GPU (`predict.replicas_per_gpu`), so the host-side work of one GPU runs on as many CPUs
as the node has per GPU. It is the local runner's path (pipeline/run/local.py), one process per
replica instead of one thread, so it scales over a cluster's nodes.

Retries: Ray restarts a replica that died and runs its unit again (pipeline/run/pool.py). File
names are fixed by (run attempt, unit, file index), so the retry writes the very files the dead
replica may have begun, and no unit's rows are ever in two files."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.reporting.progress import BufferedCounter
from pipeline.stages.layout import OutputFiles
from pipeline.stages.predict import FusedScorer, Predictor
from pipeline.stages.read import InputFile, PlannedParquet
from pipeline.unitwork import noting

if TYPE_CHECKING:  # the report's models are the driver's: 38 ms of pydantic classes in each replica
    from pipeline.reporting.schema import Stage

Piece = tuple[InputFile, str, "range | None"]  # a file of a date, or a range of its row groups
RECORD_FIELDS = (
    "unit",
    "rows_in",
    "rows_out",
    "files",
    "read_s",
    "score_s",
    "write_s",
    "cpu_s",  # the replica process's CPU (every thread) while the unit ran
    "start",
    "end",
    "pid",
    "process_start",  # wall clock: the replica's process started, its __init__ began and ended
    "init_start",
    "init_end",
    "notes",  # JSON: the files the unit wrote and its input key records (pipeline/unitwork.py), for resume
)


@dataclass
class UnitPlan:
    """What every replica needs to find a unit's rows and name its files. Small and picklable:
    a unit is a list of pieces of one date, each (file, date, row groups or None for the whole
    file)."""

    source: PlannedParquet
    units: list[list[Piece]]
    files: OutputFiles
    file_prefix: str  # the run's prefix and this attempt's id: part-<run>.<attempt>.
    block_bytes: int


class ScoringReplica:
    """A Ray actor (pipeline/run/pool.py): `__init__` starts loading the model (on the GPU Ray
    assigned, or the CPU) from the predictor's arguments alone, so that replicas start as soon
    as Ray is up, while the driver still plans the run. The load (torch's import, the weights,
    the device) goes on on a thread while the first unit's first block is read and
    preprocessed: the forward pass is the first thing that waits for it. `score_unit` takes a
    unit number and the run's plan and preprocessing (boxed: fetched once per replica) and
    returns the unit's record. Two threads (pipeline/run/pool.py): one scores, the other
    answers `progress_calls`."""

    name = "score"

    def __init__(self, predictor_kwargs: dict[str, Any], host_threads: int = 1) -> None:
        from pipeline.run.clock import process_started_at

        self.started = {"pid": os.getpid(), "process_start": process_started_at(), "init_start": time.time()}
        # Arrow's own pools default to every core of the machine, in each of a node's replicas
        pa.set_cpu_count(max(1, host_threads))
        pa.set_io_thread_count(max(2, host_threads))
        self.progress = predictor_kwargs.get("progress")
        self.job: tuple[str, tuple[UnitPlan, FusedScorer]] | None = None
        self.predictor = _Loading(predictor_kwargs, self.started)

    def _plan(self, boxed: list[Any]) -> tuple[UnitPlan, FusedScorer]:
        """The run's (plan, scorer), from the object ref in `boxed` (a list, so Ray passes the
        ref itself): fetched by the first unit, kept for the rest (and fetched again by a
        replica Ray restarted)."""
        import ray

        ref = boxed[0]
        if self.job is None or self.job[0] != ref.hex():
            self.job = (ref.hex(), ray.get(ref))
        return self.job[1]

    def score_unit(self, unit: int, boxed: list[Any]) -> dict[str, Any]:
        """Read, preprocess, score and write one unit; returns its record, with the progress
        calls not yet taken by `progress`."""
        plan, scorer = self._plan(boxed)
        clock = {"read_s": 0.0, "score_s": 0.0, "write_s": 0.0, "start": time.time()}
        cpu0 = time.process_time()
        out = UnitFiles(plan.files, f"{plan.file_prefix}{unit:06d}")
        if hasattr(scorer, "unit_start"):  # challengers (pipeline/run/challengers.py) write too
            scorer.unit_start(unit)
        rows_in = 0
        # torch's import holds the GIL for most of its second: a read beside it took 3-4x as long
        # and slowed the import by half (one replica's process, 2 CPUs); the rest of the load
        # (weights, device) still goes on beside the unit's first read
        self.predictor.imported.wait()
        with noting() as notes:
            for f, date, groups in plan.units[unit]:
                # while the model loads, a first block of one batch: the forward pass begins as
                # soon as the model is there, not after the whole file's decode
                first = scorer.preprocess_batch_size if self.predictor.loading() else None
                blocks = plan.source.read_task_blocks(f, date, plan.block_bytes, groups, first)
                rows_in += self._score_blocks(scorer, blocks, out, clock)
            clock["write_s"] += out.close()
        self.predictor.wait()  # a unit with no rows: the load's end (and error) still counted
        if hasattr(scorer, "unit_done"):  # a challenger's files are not the unit's (resume)
            clock["write_s"] += scorer.unit_done()
        record = {"unit": unit, "rows_in": rows_in, "rows_out": out.rows, "files": out.count}
        record |= {"notes": json.dumps(asdict(notes)), "cpu_s": time.process_time() - cpu0}
        return {**record, **clock, "end": time.time(), **self.started, "progress": self.progress_calls()}

    def progress_calls(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The progress calls made since the last time (the run's BufferedCounter): the pool asks
        for them every second from its own thread, so that a unit stuck in a stage still shows
        which rows it read (a stall's report names the stage)."""
        return self.progress.drain() if isinstance(self.progress, BufferedCounter) else []

    def _score_blocks(
        self, scorer: FusedScorer, blocks: Iterator[pa.Table], out: UnitFiles, clock: dict[str, float]
    ) -> int:
        rows_in, step = 0, max(1, scorer.preprocess_batch_size)
        while True:
            t0 = time.perf_counter()
            block = next(blocks, None)
            clock["read_s"] += time.perf_counter() - t0
            if block is None:
                return rows_in
            rows_in += block.num_rows
            for i in range(0, block.num_rows, step):
                t0 = time.perf_counter()
                scored = scorer.score(block.slice(i, step), self.predictor)
                clock["score_s"] += time.perf_counter() - t0
                clock["write_s"] += out.add(scored)


class _Loading:
    """The replica's Predictor, built on a thread; called like it, the first call waits for it
    (and raises what the load raised: a model that does not load fails the unit, as before)."""

    def __init__(self, kwargs: dict[str, Any], started: dict[str, Any]) -> None:
        self.predictor: Predictor | None = None
        self.error: BaseException | None = None
        self.started = started
        self.imported = threading.Event()  # torch's import is done (or failed: the load raises it)
        self.thread = threading.Thread(target=self._load, args=(kwargs,), name="batchscore-model-load")
        self.thread.start()

    def _load(self, kwargs: dict[str, Any]) -> None:
        try:
            import torch  # noqa: F401  - alone first: see `ScoringReplica.score_unit`
        except BaseException:  # noqa: BLE001 - Predictor's own import raises it again, as the load's error
            pass
        finally:
            self.imported.set()
        try:
            self.predictor = Predictor(**kwargs)
        except BaseException as e:  # noqa: BLE001 - raised by the first call, in the unit
            self.error = e
        self.started["init_end"] = time.time()

    def loading(self) -> bool:
        return self.predictor is None and self.error is None and self.thread.is_alive()

    def wait(self) -> Predictor:
        if self.predictor is None:
            self.thread.join()
            if self.error is not None:
                raise self.error
        assert self.predictor is not None
        return self.predictor

    def __call__(self, features: pa.Table) -> pa.Table:
        return self.wait()(features)


class UnitFiles:
    """A unit's predictions, written as files of at most the target rows as soon as whole targets
    are buffered, the rest at the end; the i-th file is `<name>-<i>.parquet`."""

    def __init__(self, files: OutputFiles, name: str) -> None:
        self.files, self.name = files, name
        self.buf: list[pa.Table] = []
        self.buffered = self.rows = self.count = 0

    def add(self, rows: pa.Table) -> float:
        """Buffer `rows`; returns the seconds spent writing (0 until a target is full)."""
        if rows.num_rows:
            self.buf.append(rows)
            self.buffered += rows.num_rows
        return self._flush(whole_only=True) if self.buffered >= self.files.target else 0.0

    def close(self) -> float:
        return self._flush(whole_only=False) if self.buffered else 0.0

    def _flush(self, whole_only: bool) -> float:
        t0 = time.perf_counter()
        rows = pa.concat_tables(self.buf, promote_options="default")
        n = rows.num_rows // self.files.target * self.files.target if whole_only else rows.num_rows
        rest = rows.slice(n)
        start = self.count
        self.count += self.files.write(rows.slice(0, n), lambda i: f"{self.name}-{start + i}.parquet")
        self.rows += n
        self.buf, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows
        return time.perf_counter() - t0


@dataclass
class ReplicaRun:
    """The records of a run's units, summed into the report's stages (read, score, write), like
    the local runner's (pipeline/run/local.py)."""

    replicas: int
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append({k: record[k] for k in RECORD_FIELDS})

    def stages(self) -> list[Stage]:
        from pipeline.reporting.schema import Stage

        if not self.records:
            return []
        first = min(r["start"] for r in self.records)
        wall = max(r["end"] for r in self.records) - first
        rows_in = sum(r["rows_in"] for r in self.records)
        rows_out = sum(r["rows_out"] for r in self.records)
        files = sum(r["files"] for r in self.records)
        parts = (
            ("ReadParquet", "read_s", rows_in, len(self.records)),
            ("Score", "score_s", rows_out, 0),
            ("Write", "write_s", rows_out, files),
        )
        return [
            Stage(
                name=name,
                tasks=tasks or len(self.records),
                rows_in=rows_in,
                rows_out=out,
                wall_s=round(wall, 3),
                task_time_s=round(sum(r[key] for r in self.records), 3),
                rows_per_s=round(out / wall, 1) if wall > 0 and out else None,
            )
            for name, key, out, tasks in parts
        ]

    def stats_text(self) -> str:
        lines = [
            f"{s.name}: {s.tasks} units/files, {s.rows_out} rows out, {s.wall_s} s wall, "
            f"{s.task_time_s} s busy over {self.replicas} replica(s)"
            for s in self.stages()
        ]
        return "\n".join([*lines, *self.cpu_lines(), *self.startup_lines()]).strip()

    def cpu_lines(self) -> list[str]:
        """The replicas' CPU per row once started: over every unit but each replica's first
        (which also imports, loads the model and warms up)."""
        later = [r for pid in {r["pid"] for r in self.records} for r in self._of(pid)[1:]]
        rows = sum(r["rows_in"] for r in later)
        if not rows:
            return []
        cpu = sum(r["cpu_s"] for r in later)
        per_row = f"{cpu / rows * 1e6:.3f} us per row ({rows} rows)"
        return [f"replicas' CPU after their first unit: {cpu:.2f} s, {per_row}"]

    def _of(self, pid: int) -> list[dict[str, Any]]:
        return sorted((r for r in self.records if r["pid"] == pid), key=lambda r: r["start"])

    def startup_lines(self) -> list[str]:
        """Each replica's start, relative to the first unit anywhere: its process, its __init__
        (imports, model load, device) and its first unit."""
        if not self.records:
            return []
        t0 = min(r["process_start"] for r in self.records)
        out = []
        for pid in sorted({r["pid"] for r in self.records}):
            mine = [r for r in self.records if r["pid"] == pid]
            r = mine[0]
            first = min(x["start"] for x in mine)
            out.append(
                f"replica pid {pid}: process +{r['process_start'] - t0:.2f} s, "
                f"init +{r['init_start'] - t0:.2f} to +{r['init_end'] - t0:.2f} s, "
                f"first unit +{first - t0:.2f} s, {len(mine)} unit(s)"
            )
        return out


def unit_plan(p: Any, files: OutputFiles, file_prefix: str, replicas: int, read_keys: Any) -> UnitPlan:
    """The run's units: a big file's row groups split so that there are about two pieces per
    replica when files are few (every replica busy, a short tail), and small files of a date
    packed together into units of up to the output's rows per file (or the rows over the
    replicas, if fewer), so that written files approach the target whatever the input's layout.
    The last units go out in their pieces (`split_tail`): a shorter tail."""
    cfg = p.cfg
    columns = list(dict.fromkeys([*p.requirements.columns, cfg.input.partition_column]))
    source = PlannedParquet(p.inputs, columns, read_keys)
    cap = max(1, min(files.target, -(-p.inputs.rows // max(1, replicas))))
    block_bytes = 128 * 1024 * 1024  # Ray Data's default target block size
    units = split_tail(pack(source.read_tasks(2 * replicas), cap), replicas)
    return UnitPlan(source, units, files, file_prefix, block_bytes)


def _piece_rows(piece: Piece) -> int:
    f, _, groups = piece
    return f.rows if groups is None else f.rows * len(groups) // max(1, f.row_groups)


def pack(pieces: list[Piece], cap: int) -> list[list[Piece]]:
    """Consecutive pieces of one date in units of at most `cap` rows (a bigger piece alone)."""
    units: list[list[Piece]] = []
    rows = 0
    for piece in pieces:
        n = _piece_rows(piece)
        if units and units[-1][0][1] == piece[1] and rows + n <= cap:
            units[-1].append(piece)
            rows += n
        else:
            units.append([piece])
            rows = n
    return units


def split_tail(units: list[list[Piece]], replicas: int) -> list[list[Piece]]:
    """The last `replicas` units cut back into their pieces, one unit each. Why: a replica that
    finds no unit left idles while the others finish theirs, up to one unit's time; with the
    last units smaller that tail is shorter (measured on the 2-CPU machine, 16 units of two
    375 k-row files over 2 replicas: one CPU idle for 1.4 s at the end). Their files are
    smaller than the target, so only with at least 4 units per replica: at most a quarter of
    the run's rows, in files of the run's last date."""
    if replicas < 1 or len(units) < 4 * replicas:
        return units
    head, tail = units[:-replicas], units[-replicas:]
    return head + [[piece] for unit in tail for piece in unit]
