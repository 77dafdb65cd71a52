"""The local runner: the run's stages in this process, on threads, without Ray.

Why: on one machine without a GPU, Ray's processes and the imports in each of its workers cost
more than the parallelism they give. Measured on 2 CPUs (benchmarks/RESULTS.md): a new local
Ray's start and its workers' imports were 44 % of a 4 M-row run's CPU, and the run took three
times as long as a hand-written loop. Here one scoring thread per CPU (the fused plan's replicas)
runs the very stages the Ray job folds over its Dataset: the planned read (and the input's key
record), preprocessing, the predictor, then the unit's file buffer (a unit: files of one date
packed up to the target rows, adoptable alone by a rerun: pipeline/run/resume.py), which writes files of
`output.target_rows_per_file` rows with their stats in the footer. The threads share the work by
slices of `preprocessing.batch_size` rows (see LocalRun), so one big input file keeps every
thread busy too. PyArrow's reads and writes, numpy's kernels and torch's forward pass release the
GIL, so the threads keep the CPUs busy; the model is loaded once and shared.

The commit is the Ray run's (pipeline/commit/streaming.DateCommitter watching the files), so
every check holds as it does there. What Ray would add and this does not: retries of a failed
task. Here a failed stage stops the run (its uncommitted dates are removed, nothing of them is
visible), and a rerun goes on from the dates already committed."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from models.imports import import_object
from pipeline.commit.tables import run_file_prefix
from pipeline.config import OutputConfig
from pipeline.reporting.schema import Stage
from pipeline.run.preflight import Prepared
from pipeline.stages.layout import OutputFiles
from pipeline.stages.predict import FusedScorer, Predictor
from pipeline.stages.read import InputFile, PlannedParquet
from pipeline.storage import Location
from pipeline.unitwork import UnitNotes, noting

# Ray Data's default target block size: a file bigger than this in memory is read in parts
BLOCK_BYTES = 128 * 1024 * 1024
# a unit's buffered predictions are compacted into one table every this many batches (DateFiles)
COMPACT_EVERY = 16


def preload(
    modules: Sequence[str] = ("torch", "models.transforms"), objects: Sequence[str] = ()
) -> threading.Thread:
    """Import `modules` and the import paths `objects` (a user's preprocessing function, whose
    module often imports torch: 1-2 s) on a thread while the driver checks the model, the inputs
    and the table's log, which wait mostly on storage and delta-rs, not on Python. On the Ray
    runner this takes the import off the time after Ray is up, when the replicas start."""

    def load() -> None:
        # only a warm-up: a failure here (an import cut short by the interpreter exiting after a
        # config error, a function that does not import) is not the run's; the main thread's own
        # import raises any real one, with its message
        try:
            for name in modules:
                __import__(name)  # the import statement's path (importlib's skips -X importtime's log)
            for path in objects:
                import_object(path)
        except BaseException:  # noqa: BLE001
            pass

    thread = threading.Thread(target=load, name="batchscore-preload", daemon=True)
    thread.start()
    return thread


@dataclass
class StageClock:
    """One stage's tasks, rows and time across the threads (first start to last end, and busy)."""

    name: str
    tasks: int = 0
    rows_in: int = 0
    rows_out: int = 0
    busy_s: float = 0.0
    first: float | None = None
    last: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, start: float, rows_in: int, rows_out: int, tasks: int = 1) -> None:
        end = time.perf_counter()
        with self.lock:
            self.tasks += tasks
            self.rows_in += rows_in
            self.rows_out += rows_out
            self.busy_s += end - start
            self.first = start if self.first is None else min(self.first, start)
            self.last = end if self.last is None else max(self.last, end)

    def stage(self) -> Stage:
        wall = (self.last - self.first) if self.first is not None and self.last is not None else None
        return Stage(
            name=self.name,
            tasks=self.tasks,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            wall_s=round(wall, 3) if wall else None,
            task_time_s=round(self.busy_s, 3),
            rows_per_s=round(self.rows_out / wall, 1) if wall and self.rows_out else None,
        )


class DateFiles:
    """The predictions of each unit (consecutive input files of one date, packed up to
    `target_rows_per_file` rows, or one bigger file), buffered and written as files of
    `target_rows_per_file` rows into the table's directory of each partition: whole targets as soon
    as the buffer holds them, the unit's last rows once its last input file is scored. A unit's rows
    are never in another unit's files, so a rerun can adopt each finished unit (pipeline/run/
    resume.py): `on_unit(unit, notes)` is called once the unit's files are closed, with what it
    wrote. Names carry the attempt's prefix (part-RUN.ATTEMPT.) and a sequence number: no retries
    here, and no other process has the attempt, so nothing is ever written twice.

    The buffer is compacted every COMPACT_EVERY batches (their rows copied into one table). A
    batch's table holds the model's output tensor's memory (the score, zero-copy) and Arrow's
    small objects, allocated by malloc between the forward pass's big temporaries: held until
    the unit is written, they split the freed space, and the heap kept growing (measured at 1 M
    rows on one date: 364 MB of glibc heap for 100 MB in use, 906 MB with a challenger beside,
    and every page of it a page fault; compacted: 230 and 395 MB, benchmarks/RESULTS.md)."""

    def __init__(
        self,
        table: Location,
        out: OutputConfig,
        run_id: str,
        files_per_unit: dict[int, int],
        attempt: str = "",
        on_unit: Callable[[int, UnitNotes], None] | None = None,
    ) -> None:
        self.files, self.run_id, self.attempt = OutputFiles.for_output(table, out), run_id, attempt
        self.left = dict(files_per_unit)
        self.notes = {u: UnitNotes() for u in files_per_unit}
        self.on_unit = on_unit
        self.clock = StageClock("Write")
        self._buf: dict[int, list[pa.Table]] = defaultdict(list)
        self._compacted: dict[int, int] = defaultdict(int)  # leading tables of _buf already compacted
        self._rows: dict[int, int] = defaultdict(int)
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def add(self, unit: int, rows: pa.Table) -> None:
        """Buffer `rows` of `unit`; write the buffer once it holds the target (in this thread)."""
        if not rows.num_rows:
            return
        with self._lock:
            self._buf[unit].append(rows)
            self._rows[unit] += rows.num_rows
            full = self._take_whole_files(unit)
            if not full:
                self._compact(unit)
        if full:
            self._write(unit, full)

    def _compact(self, unit: int) -> None:
        """The batches buffered since the last compaction as one table (same rows, same order),
        once there are COMPACT_EVERY of them."""
        buf, done = self._buf[unit], self._compacted[unit]
        if len(buf) - done >= COMPACT_EVERY:
            buf[done:] = [pa.concat_tables(buf[done:], promote_options="default").combine_chunks()]
            self._compacted[unit] = done + 1

    def file_done(self, unit: int) -> None:
        """One input file of `unit` is scored; after its last, the unit's rest is written."""
        with self._lock:
            self.left[unit] -= 1
            last = self.left[unit] == 0
            rest = self._take(unit) if last else None
        if rest:
            self._write(unit, rest)
        if last and self.on_unit is not None:
            self.on_unit(unit, self.notes[unit])

    def _take(self, unit: int) -> list[pa.Table]:
        tables, self._buf[unit], self._rows[unit] = self._buf[unit], [], 0
        self._compacted[unit] = 0
        return tables

    def _take_whole_files(self, unit: int) -> list[pa.Table] | None:
        """The buffer's first whole multiple of the target rows (the rest stays), or None."""
        target = self.files.target
        n = self._rows[unit] // target * target
        if not n:
            return None
        rows = pa.concat_tables(self._take(unit), promote_options="default")
        if rows.num_rows > n:
            self._buf[unit], self._rows[unit] = [rows.slice(n)], rows.num_rows - n
            self._compacted[unit] = 0
        return [rows.slice(0, n)]

    def _write(self, unit: int, tables: list[pa.Table]) -> None:
        t0 = time.perf_counter()
        rows = pa.concat_tables(tables, promote_options="default")
        prefix = run_file_prefix(self.run_id, attempt=self.attempt)
        with noting(self.notes[unit]):
            files = self.files.write(rows, lambda _: f"{prefix}local-{next(self._seq):06d}.parquet")
        self.clock.add(t0, rows.num_rows, rows.num_rows, tasks=files)


@dataclass(eq=False)
class _OpenFile:
    """An input file being read block by block, and its slices not yet written."""

    file: InputFile
    date: str
    unit: int
    blocks: Iterator[pa.Table]
    index: int = 0  # its place in the plan's files
    offset: int = 0  # rows read so far
    reading: bool = False  # a thread is reading its next block
    exhausted: bool = False
    pending: int = 0  # slices queued or being scored


def local_units(source: PlannedParquet, target: int) -> list[list[tuple[InputFile, str, Any]]]:
    """The local runner's units: consecutive whole files of one date packed up to `target` rows
    (a bigger file alone), as the replicas pack them (pipeline/run/replicas.py)."""
    from pipeline.run.replicas import pack

    return pack([(f, d, None) for f, d in source.files], max(1, target))


class LocalRun:
    """The scoring threads over the planned files. `run()` returns when every file is written, or
    raises the first stage error (the other threads stop after their current piece of work).

    The unit of work is a slice of `preprocessing.batch_size` rows, not a file: a thread scores a
    queued slice if there is one, else reads the next block of an open file (or opens the next
    file) and queues its slices. So every thread scores even when the input is one big file, and
    no thread idles while another finishes the last file (with a file per thread, one CPU of two
    stayed idle for a whole one-file run)."""

    def __init__(
        self,
        p: Prepared,
        scorer: FusedScorer,
        threads: int,
        files: DateFiles,
        read_keys: Any = None,
        units: list[list[tuple[InputFile, str, Any]]] | None = None,
    ) -> None:
        columns = list(dict.fromkeys([*p.requirements.columns, p.cfg.input.partition_column]))
        self.source = PlannedParquet(p.inputs, columns)
        self.scorer, self.files, self.read_keys = scorer, files, read_keys
        units = units if units is not None else local_units(self.source, files.files.target)
        self.slice_rows = max(1, scorer.preprocess_batch_size)
        self.threads = max(1, min(threads, -(-p.inputs.rows // self.slice_rows)))
        self.read = StageClock("ReadParquet")
        self.score = StageClock("Score")
        self._todo = enumerate([(f, d, u) for u, pieces in enumerate(units) for f, d, _ in pieces])
        self._open: list[_OpenFile] = []
        self._slices: deque[tuple[_OpenFile, int, pa.Table]] = deque()  # (file, its row offset, rows)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._doing: dict[str, tuple[str, str, float]] = {}  # thread -> (what, file, since): for a stall

    def run(self) -> LocalRun:
        import torch

        threads = torch.get_num_threads()
        try:
            return self._run()
        finally:  # the predictor sets torch's threads for the process: a library caller's come back
            torch.set_num_threads(threads)

    def _run(self) -> LocalRun:
        first = Predictor(**self.scorer.predictor_kwargs)  # the model, loaded once
        predictors = [first] + [first.share() for _ in range(self.threads - 1)]
        workers = [
            threading.Thread(target=self._work, args=(pr,), name=f"batchscore-score-{i}", daemon=True)
            for i, pr in enumerate(predictors)
        ]
        for w in workers:
            w.start()
        try:
            for w in workers:
                while w.is_alive():
                    w.join(0.2)  # a timed join: Ctrl-C reaches this thread
        except BaseException:
            self._halt()
            for w in workers:  # bounded: a thread blocked in user code is left behind (a daemon)
                w.join(5.0)
            raise
        if self._errors:
            raise self._errors[0]
        return self

    def _halt(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def _work(self, predictor: Predictor) -> None:
        try:
            while (job := self._next_job()) is not None:
                of, offset, rows = job
                me = threading.current_thread().name
                what = "reading a block of" if rows is None else f"scoring {rows.num_rows} rows of"
                self._doing[me] = (what, of.file.path, time.time())
                if rows is None:
                    self._read_block(of)
                else:
                    self._score_slice(of, offset, rows, predictor)
                self._doing.pop(me, None)
        except BaseException as e:  # the run raises it; the other threads stop
            with self._cv:
                self._errors.append(e)
            self._halt()

    def _next_job(self) -> tuple[_OpenFile, int, pa.Table | None] | None:
        """(file, row offset, slice) to score; (file, 0, None) to read the file's next block; None
        when all is done or the run stops. Waits while other threads hold the only work left."""
        with self._cv:
            while not self._stop.is_set():
                if self._slices:
                    return self._slices.popleft()
                of = next((o for o in self._open if not (o.reading or o.exhausted)), None)
                if of is None and (item := next(self._todo, None)) is not None:
                    of = self._open_file(item[0], *item[1])
                if of is not None:
                    of.reading = True
                    return of, 0, None
                if not self._open:
                    return None
                self._cv.wait()
            return None

    def _open_file(self, index: int, f: InputFile, date: str, unit: int) -> _OpenFile:
        blocks = self.source.read_file(f, date, BLOCK_BYTES)  # a generator: no I/O until read
        if self.read_keys is not None:
            blocks = self.read_keys.record([f.path], blocks)
        of = _OpenFile(f, date, unit, blocks, index)
        self._open.append(of)
        return of

    def _read_block(self, of: _OpenFile) -> None:
        """The file's next block, queued as slices; at its end, the file's input key record is
        written (by ReadKeys.record) and the file counts as read."""
        t0 = time.perf_counter()
        with noting(self.files.notes[of.unit]):  # the input's key record, made after the last block
            block = next(of.blocks, None)
        if block is None:
            self.read.add(t0, of.file.rows, 0)  # one task per file
        else:
            self.read.add(t0, 0, block.num_rows, tasks=0)
        with self._cv:
            of.reading = False
            if block is None:
                of.exhausted = True
            else:
                for i in range(0, block.num_rows, self.slice_rows):
                    self._slices.append((of, of.offset + i, block.slice(i, self.slice_rows)))
                    of.pending += 1
                of.offset += block.num_rows
            done = self._finished(of)
            self._cv.notify_all()
        if done:
            self.files.file_done(of.unit)

    def _score_slice(self, of: _OpenFile, offset: int, rows: pa.Table, predictor: Predictor) -> None:
        t0 = time.perf_counter()
        with noting(self.files.notes[of.unit]):  # its dead letters
            scored = self.scorer.score(rows, predictor, at=(of.index, offset))
        self.score.add(t0, rows.num_rows, scored.num_rows, tasks=0)
        self.files.add(of.unit, scored)
        with self._cv:
            of.pending -= 1
            done = self._finished(of)
            self._cv.notify_all()
        if done:  # after the file's last rows went to the unit's buffer
            self.files.file_done(of.unit)

    def _finished(self, of: _OpenFile) -> bool:
        """Read to its end with every slice scored: the file leaves the open list (under the lock)."""
        if of.exhausted and of.pending == 0 and of in self._open:
            self._open.remove(of)
            return True
        return False

    def halt(self) -> None:
        """Stop the threads after their current piece of work (the watchdog's stop)."""
        self._halt()

    def activity(self) -> list[str]:
        """What each busy thread is doing and for how long (a stalled run's report names them)."""
        now = time.time()
        return [
            f"thread {name}: {what} {path} for {now - since:.0f}s"
            for name, (what, path, since) in sorted(self._doing.items())
        ]

    def stages(self) -> list[Stage]:
        """The report's stages: read, score (preprocess + predict) and write, across the threads."""
        self.score.tasks = self.read.tasks
        return [c.stage() for c in (self.read, self.score, self.files.clock) if c.first is not None]

    def stats_text(self) -> str:
        return "\n".join(
            f"{s.name}: {s.tasks} tasks, {s.rows_out} rows out, {s.wall_s} s wall, {s.task_time_s} s busy "
            f"on {self.threads} thread(s)"
            for s in self.stages()
        )
