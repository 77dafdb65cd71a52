"""The errors batchscore raises on purpose, and the exit codes they map to (README, operations.md).

    0  success
    1  the run failed: storage unreachable, a date failed its commit checks, a stage crashed
    2  bad config, input or model: the message names the key, file or column (UserError)
    3  score drift over the thresholds with drift.on_breach=fail (DriftError)
    4  another run committed a date first, with another model, config or inputs (CommitConflictError)
    5  no progress for run.stall_timeout: the run was stopped (StallError)
    6  still scoring at run.deadline with run.on_deadline=fail: the run was stopped (DeadlineError)
    7  another live process runs this --run-id; nothing was written (RunIdInUseError)
    8  the champion committed, a challenger failed (its model raised or failed to load, or its rows
       did not reconcile): nothing of that challenger published for its dates (ChallengerError)

Errors raised inside Ray tasks and actors reach the driver wrapped by Ray; `find_known_error`
finds the original by following the exception's causes (no parsing of traceback text).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USER, EXIT_DRIFT, EXIT_CONFLICT = 0, 1, 2, 3, 4
EXIT_STALLED, EXIT_DEADLINE = 5, 6
EXIT_RUN_ID_IN_USE = 7
EXIT_CHALLENGER = 8


class BatchscoreError(Exception):
    """An error batchscore reports with its own message (no traceback) and exit code."""

    exit_code = EXIT_FAILED


class UserError(BatchscoreError):
    """Something the user can fix: the message names the key, file or column and what was expected."""

    exit_code = EXIT_USER


class ConfigError(UserError):
    pass


class InputError(UserError):
    pass


class StageError(UserError):
    """A stage got a batch it cannot process (e.g. missing columns)."""


class StorageError(BatchscoreError):
    """The output cannot be written (unreachable, access denied, no such bucket)."""


class CommitError(BatchscoreError):
    """A date failed its checks before its commit; nothing of it was published."""


class DriftError(BatchscoreError):
    """Scores drifted past the thresholds with drift.on_breach=fail: nothing was published."""

    exit_code = EXIT_DRIFT


class CommitConflictError(BatchscoreError):
    """Another run committed the same date first, with another model, config or inputs."""

    exit_code = EXIT_CONFLICT


class RunStopped(BatchscoreError):
    """The watchdog stopped a run that was still scoring (pipeline/run/watchdog.py). Dates it
    committed stay committed, the others are not published. `abandoned`: a worker did not stop
    (blocked in user code), so the process should exit instead of going on (jobs/cli.py does)."""

    abandoned = False


class StallError(RunStopped):
    """No row was read, scored or written for run.stall_timeout."""

    exit_code = EXIT_STALLED


class DeadlineError(RunStopped):
    """Still scoring at run.deadline with run.on_deadline=fail."""

    exit_code = EXIT_DEADLINE


class RunIdInUseError(BatchscoreError):
    """Another live process runs the same --run-id: this one stops before it writes anything."""

    exit_code = EXIT_RUN_ID_IN_USE


class ChallengerError(BatchscoreError):
    """The champion's dates were committed, but one or more challengers failed their own checks."""

    exit_code = EXIT_CHALLENGER


def known_error_types() -> tuple[type[Exception], ...]:
    """batchscore's own errors and those of models/ (bad checkpoint, bad features: exit 2)."""
    from models.checkpoint import ModelError
    from models.features import FeatureError

    return (BatchscoreError, ModelError, FeatureError)


def exit_code_of(err: BaseException) -> int:
    return getattr(err, "exit_code", EXIT_USER if isinstance(err, known_error_types()) else EXIT_FAILED)


def find_known_error(exc: BaseException) -> Exception | None:
    """The known error behind `exc`: itself, or one of its causes. Ray re-raises a task's or an
    actor's exception as a RayTaskError whose `cause` is the original (or its
    `as_instanceof_cause()`, which is both); Ray Data chains it as `__cause__`."""
    known = known_error_types()
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, known):
            return e  # type: ignore[return-value]
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None
