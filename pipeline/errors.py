"""Error types that map to exit codes. A `UserError` (bad config, bad input, bad model) exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message names the key, file or column and what was expected."""

    exit_code = 2


class ConfigError(UserError):
    pass


class InputError(UserError):
    pass


class StageError(UserError):
    """A stage got a batch it cannot process (e.g. missing columns)."""


def user_error_types() -> tuple[type[Exception], ...]:
    """Errors that mean bad config, input or model (exit 2), including those raised in models/."""
    from models.checkpoint import ModelError
    from models.features import FeatureError

    return (UserError, ModelError, FeatureError)
