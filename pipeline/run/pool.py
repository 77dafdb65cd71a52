"""The actors mode's pool: ScoringReplica actors (pipeline/run/replicas.py), all created at once,
each given the next unit number as soon as it returns the last one's record.

Why Ray core actors and not Ray Data's ActorPoolStrategy over a dataset of unit numbers (this
mode's first version): the dataset was only a dispatcher, and its cost was start-up. Measured on
2 CPUs (a 400 k-row run, CPU-seconds of every process, issue 20): Ray Data's executor started three
helper actors in processes of their own (`_AutoscalingCoordinatorActor` 1.05, `_StatsActor` 1.0,
`ActorLocationTracker` 0.61 CPU-s), and each replica imported Ray Data (about 0.5 s) before its
`__init__`, all while the replicas were starting: CPU the replicas' own start needed. What Ray
Data gave beyond dispatch is Ray core's: a dead replica is restarted (`max_restarts`) and the unit
it held is run again on it (`max_task_retries`), on another node if its node is gone. A unit's
file names are fixed (run attempt, unit, file index), so a retried unit writes the same files.
What is ours is the loop below: one unit in flight per replica, results as they come."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.commit.tables import run_file_prefix
from pipeline.reporting.progress import BufferedCounter, replay
from pipeline.run.execute import stage_objects
from pipeline.run.preflight import Prepared
from pipeline.run.replicas import ScoringReplica, UnitPlan, unit_plan
from pipeline.run.resources import PoolPlan
from pipeline.stages.deadletter import DeadLetterWriter
from pipeline.stages.layout import OutputFiles
from pipeline.stages.predict import FusedScorer

# a unit is run again at most this many times after its replica died, then the run fails (a unit
# that kills its process every time, e.g. out of memory, must not loop forever)
UNIT_RETRIES = 3
WAIT_S = 0.5  # how often the loop looks at the stop event while units are in flight
POLL_S = 1.0  # how often busy replicas are asked for their progress calls


class ReplicaPool:
    """`pool.max_replicas` replicas (at most `most`), each with `pool.num_cpus` CPUs and
    `pool.num_gpus` of a GPU, placed by `label_selector`, loading the model from
    `predictor_kwargs` as soon as they are created, while the driver goes on with its checks.
    Use as a context manager, or call `close`: that kills the replicas, which frees their GPUs
    for what the process does next."""

    def __init__(
        self, predictor_kwargs: dict[str, Any], pool: Any, label_selector: Any = None, most: int | None = None
    ) -> None:
        import ray

        self.size = max(1, min(pool.max_replicas, most or pool.max_replicas))
        options: dict[str, Any] = {
            "num_cpus": pool.num_cpus,
            "num_gpus": pool.num_gpus,
            "max_restarts": -1,
            "max_task_retries": UNIT_RETRIES,
            "max_concurrency": 2,  # one thread scores, the other answers progress requests
        }
        if label_selector:
            options["label_selector"] = label_selector
        actor = ray.remote(ScoringReplica).options(**options)
        # one copy of the model's arguments in the object store for all replicas (and their
        # restarts), held here for the pool's life
        self._kwargs = ray.put(predictor_kwargs)
        host_threads = max(1, int(pool.num_cpus))
        self.actors = [actor.remote(self._kwargs, host_threads=host_threads) for _ in range(self.size)]

    def __enter__(self) -> ReplicaPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

    def records(
        self,
        plan: UnitPlan,
        scorer: FusedScorer,
        counter: Any = None,
        stop: threading.Event | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Score the plan's units, one in flight per replica; yields each unit's record as it
        comes back (in completion order), and replays the replicas' progress calls into
        `counter` (asked for every POLL_S while units run, and with each record). A replica's
        error (the model's, a column's) is raised here as itself; `stop` set ends the loop
        within WAIT_S."""
        import ray

        job = [ray.put((plan, scorer))]  # boxed: each replica fetches it once
        pending, idle = deque(range(len(plan.units))), list(self.actors)
        busy: dict[Any, Any] = {}  # a unit in flight -> its replica
        polls = _Polls(counter)
        while pending or busy:
            while idle and pending:
                a = idle.pop()
                busy[a.score_unit.remote(pending.popleft(), job)] = a
            polls.ask(busy.values())
            ready, _ = ray.wait([*busy, *polls.refs], num_returns=1, timeout=WAIT_S)
            if stop is not None and stop.is_set():
                return
            for ref in ready:
                if polls.take(ref):
                    continue
                idle.append(busy.pop(ref))
                record = ray.get(ref)
                replay(counter, record.pop("progress"))
                yield record
        polls.finish()


class _Polls:
    """The pool's requests for its busy replicas' progress calls, one at a time per replica."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.out: dict[Any, Any] = {}  # request -> replica
        self.last = 0.0

    @property
    def refs(self) -> list[Any]:
        return list(self.out)

    def ask(self, replicas: Iterable[Any]) -> None:
        now = time.monotonic()
        if now - self.last < POLL_S:
            return
        self.last = now
        asked = set(map(id, self.out.values()))
        for a in replicas:
            if id(a) not in asked:
                self.out[a.progress_calls.remote()] = a

    def take(self, ref: Any) -> bool:
        """`ref` was a progress request: its calls replayed."""
        import ray

        if ref not in self.out:
            return False
        del self.out[ref]
        with contextlib.suppress(Exception):  # a replica that died: its unit is retried anyway
            replay(self.counter, ray.get(ref))
        return True

    def finish(self, timeout_s: float = 5.0) -> None:
        """The requests still out when the last unit came back: their calls counted too."""
        import ray

        for ref in list(self.out):
            with contextlib.suppress(Exception):
                replay(self.counter, ray.get(ref, timeout=timeout_s))
        self.out.clear()


@dataclass
class StartedReplicas:
    """The actors mode's replicas, started as soon as Ray is up, with what the run's later
    stages must share with them: the unit plan, the dead-letter writer and the progress buffer
    their stage objects are built with."""

    pool: ReplicaPool | None  # None: no unit to score (all adopted from a dead attempt)
    plan: UnitPlan
    dead_letter: DeadLetterWriter
    progress: BufferedCounter

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def start_replicas(
    p: Prepared, pool: PoolPlan, tables: Any, run_id: str, attempt: str, read_keys: Any
) -> StartedReplicas:
    """Plan the units and create the replicas (they load the model meanwhile). Nothing here
    waits on them: the driver goes on with its checks while they start."""
    cfg = p.cfg
    dead_letter = DeadLetterWriter(
        tables.dead_letters.location, cfg.input.partition_column, cfg.output.key_columns, run_id, attempt
    )
    progress = BufferedCounter()  # replayed into the driver's counter as results come back
    _, kwargs = stage_objects(p, pool, run_id, dead_letter=dead_letter, progress=progress)
    files = OutputFiles.for_output(tables.location, cfg.output)
    # this attempt's own names: a rerun with the same run id never writes over them
    prefix = run_file_prefix(run_id, attempt=attempt)
    plan = unit_plan(p, files, prefix, pool.max_replicas, read_keys)
    replicas = (
        ReplicaPool(kwargs, pool, cfg.predict.label_selector, most=len(plan.units)) if plan.units else None
    )
    return StartedReplicas(replicas, plan, dead_letter, progress)
