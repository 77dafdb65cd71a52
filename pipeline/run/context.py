"""What the phases of one run share once the pipeline has run: config, inputs, the tables, the
run's identity and policy, the committer, and the timings measured so far."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.commit.partitions import CommitPolicy, RunIdentity
from pipeline.commit.streaming import DateCommitter
from pipeline.config import JobConfig
from pipeline.run.preflight import DatePlan, Prepared
from pipeline.run.resources import PoolPlan


@dataclass
class RunContext:
    cfg: JobConfig
    p: Prepared
    run_id: str
    started: datetime
    t_start: float
    dp: DatePlan
    pool: PoolPlan
    tables: Any
    run: RunIdentity
    policy: CommitPolicy
    committer: DateCommitter
    committed: dict[str, tuple[str, dict]]  # date -> (model sha256, score profile), from the log
    timings: dict[str, float | None]
    deadline: dict[str, Any] | None = None  # the watchdog's summary (pipeline/run/watchdog.py)
    challengers: Any = None  # pipeline.run.challengers.ChallengerSet, with config `challengers`
    replicas: Any = None  # the actors mode's replicas, started with Ray (pipeline/run/pool.py)
    attempt: Any = None  # pipeline.run.attempt.Attempt: records each finished unit (resume)
    adoption: Any = None  # pipeline.run.resume.Adoption: the dead attempts' units this run adopted

    @property
    def adopted_rows(self) -> int:
        return self.adoption.rows if self.adoption is not None else 0

    @property
    def dates(self) -> list[str]:
        """The dates this run scores."""
        return [part.date for part in self.p.inputs.partitions]
