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

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.reporting.progress import replay
from pipeline.run.replicas import ScoringReplica, UnitPlan
from pipeline.stages.predict import FusedScorer

# a unit whose replica died this many times in a row fails the run (a unit that kills its
# process every time, e.g. out of memory, must not loop forever)
UNIT_RETRIES = 3
WAIT_S = 0.5  # how often the loop looks at the stop event while units are in flight


class ReplicaPool:
    """`size` replicas of `scorer`, each with `pool.num_cpus` CPUs and `pool.num_gpus` of a GPU,
    placed by `label_selector`. Use as a context manager: leaving it kills the replicas, which
    frees their GPUs for what the process does next."""

    def __init__(self, plan: UnitPlan, scorer: FusedScorer, pool: Any, label_selector: Any = None) -> None:
        import ray

        self.size = max(1, min(pool.max_replicas, len(plan.units)))
        options: dict[str, Any] = {
            "num_cpus": pool.num_cpus,
            "num_gpus": pool.num_gpus,
            "max_restarts": -1,
            "max_task_retries": UNIT_RETRIES,
        }
        if label_selector:
            options["label_selector"] = label_selector
        actor = ray.remote(ScoringReplica).options(**options)
        # one copy of the plan and the scorer in the object store for all replicas (and their
        # restarts), held here for the pool's life
        self._args = (ray.put(plan), ray.put(scorer))
        host_threads = max(1, int(pool.num_cpus))
        self.actors = [actor.remote(*self._args, host_threads=host_threads) for _ in range(self.size)]

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
        self, units: Iterable[int], counter: Any = None, stop: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        """Score `units`, one in flight per replica; yields each unit's record as it comes back
        (in completion order), and replays the replicas' progress calls into `counter`. A
        replica's error (the model's, a column's) is raised here as itself; `stop` set ends the
        loop within WAIT_S."""
        import ray

        pending, idle = deque(units), list(self.actors)
        busy: dict[Any, Any] = {}  # a unit's result stream -> its replica
        while pending or busy:
            while idle and pending:
                a = idle.pop()
                busy[a.score_unit.options(num_returns="streaming").remote(pending.popleft())] = a
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=WAIT_S)
            if stop is not None and stop.is_set():
                return
            for stream in ready:
                item = next(stream, None)
                if item is None:  # the unit's stream ended: its replica takes the next unit
                    idle.append(busy.pop(stream))
                    continue
                result = ray.get(item)
                if "progress" in result:
                    replay(counter, result["progress"])
                else:
                    yield result
