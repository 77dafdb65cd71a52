"""A challenger's replicas of its own (predict.challengers_placement, pipeline/run/resources.py's
plan_placement): a pool of actors holding that challenger's model alone, fed by the champion's
replicas (pipeline/run/challengers.py's ReplicaScorer).

Why the champion's replicas feed them, not a second read: the champion's replica reads its unit
and preprocesses each slice once per distinct preprocessing anyway; a challenger placed apart gets
the preprocessed slice it needs (keys and date with it) as an actor call, scores it and writes its
files. The input is read once, each preprocessing made once, whatever the placement.

A unit's slices all go to one replica of the pool (by unit number), which writes them as the
unit's files in the challenger's table: the champion's names (run attempt, unit, file index), so
the files of a unit the champion runs again are written again under the same names. A token per
run of a unit (its start time in the champion's replica) lets the replica drop what a dead
champion replica sent of an earlier run of the unit. A replica that raises, or dies (it is not
restarted), fails its challenger alone: the champion's replica notes it and sends it nothing more."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import pyarrow as pa

from pipeline.run.replicas import UnitFiles, _Loading
from pipeline.unitwork import noting

IN_FLIGHT = 4  # slices sent to a pool and not yet scored, per champion replica and challenger


class OwnReplica:
    """A Ray actor holding one challenger's model, loaded on a thread from `__init__` on."""

    def __init__(
        self, kwargs: dict[str, Any], files: Any, prefix: str, batch_size: int, host_threads: int = 1
    ) -> None:
        from pipeline.run.clock import process_started_at

        pa.set_cpu_count(max(1, host_threads))
        self.started = {"pid": os.getpid(), "process_start": process_started_at(), "init_start": time.time()}
        self.units = OwnUnits(files, prefix, batch_size, _Loading(kwargs, self.started))

    def add(self, unit: int, token: int, feats: pa.Table) -> None:
        self.units.add(unit, token, feats)

    def close(self, unit: int, token: int) -> float:
        return self.units.close(unit, token)


class OwnUnits:
    """What an OwnReplica does with the slices it gets: each unit's rows scored by `predictor`
    and buffered into the unit's files (`prefix` + unit number, in the challenger's table). Of
    two runs of a unit the later token wins: the earlier one's rows are dropped, its files
    written again under the same names."""

    def __init__(self, files: Any, prefix: str, batch_size: int, predictor: Any) -> None:
        self.files, self.prefix, self.batch_size, self.predictor = files, prefix, batch_size, predictor
        self.units: dict[int, tuple[int, UnitFiles]] = {}
        self.error: BaseException | None = None

    def add(self, unit: int, token: int, feats: pa.Table) -> None:
        """Score one preprocessed slice of `unit` and buffer its rows into the unit's files."""
        out = self._unit(unit, token)
        if out is None:  # an earlier run of the unit, sent by a replica that died
            return
        self._guarded(self._score, feats, out)

    def close(self, unit: int, token: int) -> float:
        """The unit's last rows written; returns the seconds spent writing."""
        entry = self.units.get(unit)
        if entry is None or entry[0] != token:
            return 0.0
        del self.units[unit]
        return self._guarded(entry[1].close)

    def _unit(self, unit: int, token: int) -> UnitFiles | None:
        if self.error is not None:  # failed once: this challenger is out of the run
            raise self.error
        known = self.units.get(unit)
        if known is not None and known[0] > token:
            return None
        if known is None or known[0] < token:  # a new run of the unit: its files start over
            self.units[unit] = (token, UnitFiles(self.files, f"{self.prefix}{unit:06d}"))
        return self.units[unit][1]

    def _score(self, feats: pa.Table, out: UnitFiles) -> None:
        with noting():  # not a champion unit's files (resume adopts those)
            for j in range(0, max(feats.num_rows, 1), self.batch_size):
                out.add(self.predictor(feats.slice(j, self.batch_size)))

    def _guarded(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            self.error = e
            raise


class OwnPool:
    """`replicas` OwnReplica actors for one challenger, each with the champion's replica resources
    (the pool plan split the replicas between the pools). `close` kills them."""

    def __init__(
        self, model: Any, prefix: str, pool: Any, replicas: int, batch_size: int, label_selector: Any = None
    ) -> None:
        import ray

        options: dict[str, Any] = {
            "num_cpus": pool.num_cpus,
            "num_gpus": pool.num_gpus,
            "max_restarts": 0,  # a dead replica fails its challenger: its buffered units are gone
            "max_concurrency": 1,
        }
        if label_selector:
            options["label_selector"] = label_selector
        actor = ray.remote(OwnReplica).options(**options)
        host = max(1, int(pool.num_cpus))
        self.actors = [
            actor.remote(model.kwargs, model.files, prefix, batch_size, host) for _ in range(max(1, replicas))
        ]

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []


class OwnSender:
    """The champion replica's side of one challenger's pool for the unit it scores: its slices
    sent to the unit's replica, at most IN_FLIGHT unscored (the champion waits for the oldest
    beyond that: a challenger slower than the champion slows it, it never runs ahead unbounded),
    all of them scored and the unit's files closed before the champion's unit ends."""

    def __init__(self, actors: list[Any], unit: int) -> None:
        self.actor = actors[unit % len(actors)]
        self.unit, self.token = unit, time.time_ns()
        self.sent: deque[Any] = deque()
        self.any = False  # a unit of a date it does not score sends nothing, closes nothing

    def send(self, feats: pa.Table) -> None:
        import ray

        self.sent.append(self.actor.add.remote(self.unit, self.token, feats))
        self.any = True
        while len(self.sent) > IN_FLIGHT:
            ray.get(self.sent.popleft())

    def close(self) -> float:
        import ray

        while self.sent:
            ray.get(self.sent.popleft())
        if not self.any:
            return 0.0
        return float(ray.get(self.actor.close.remote(self.unit, self.token)))


def cause_of(e: BaseException) -> BaseException:
    """The error a challenger's replica raised, out of Ray's wrapping (RayTaskError.cause)."""
    return getattr(e, "cause", None) or e
