"""Ray token authentication, checked before a run joins a cluster at an address.

A Ray 2.59+ cluster refuses a driver whose token does not match, or that sends none: a driver
given an explicit address sends its token only with RAY_AUTH_MODE=token. `ray.init` gets the
refusal on its first try but retries the GCS connection about 20 times, a second apart, and then
raises a ConnectionError whose text alone holds the reason (exit 1 after ~21 s). One GCS client
made here gets the same refusal at once as a `ray.exceptions.AuthenticationError` (measured:
~10 ms on 127.0.0.1), so the run stops with a UserError that says what to check."""

from __future__ import annotations

import os
import socket

from pipeline.errors import UserError

TOKEN_SOURCES = "RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"


def check_token_accepted(address: str) -> None:
    """Raise UserError when the Ray cluster at `address` (host:port) refuses this process's
    authentication token. Anything else (no such host, a cluster not up yet, a ray:// address)
    is left to `ray.init`, which retries and reports it as before."""
    host_port = _host_port(address)
    if host_port is None or not _listening(*host_port):
        return
    reason = _refusal(address)
    if reason is not None:
        raise join_refused(address, reason)


def join_refused(address: str, reason: str) -> UserError:
    """The error for a refused (or missing) token: the address, Ray's reason and where the token
    comes from, never the token itself."""
    mode = os.environ.get("RAY_AUTH_MODE", "")
    mode_note = ""
    if mode.lower() in ("", "disabled"):
        mode_note = (
            f" RAY_AUTH_MODE is {mode or 'unset'} here, so no token was sent: a driver sends its "
            "token to an address it is given only with RAY_AUTH_MODE=token."
        )
    return UserError(
        f"cannot join the Ray cluster at {address}: {reason} (Ray token authentication).{mode_note} "
        f"The driver's token is the first of {TOKEN_SOURCES} (here: {token_source()}); it must be "
        "the cluster's token (`ray get-auth-token` on the head prints it)."
    )


def token_source() -> str:
    """Which of Ray's token sources this process would use, in Ray's order (not the token)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN is set"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}" + ("" if os.path.isfile(path) else ", no such file")
    if os.path.isfile(os.path.expanduser(DEFAULT_TOKEN_FILE)):
        return DEFAULT_TOKEN_FILE
    return f"none of them: RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH unset, no {DEFAULT_TOKEN_FILE}"


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a GCS address "host:port"; None for "auto", "local", ray://, http://."""
    if "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit()):
        return None
    return host.strip("[]"), int(port)


def _listening(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether something accepts connections there: a GCS client to a closed port waits ~11 s
    before it gives up, and `ray.init` waits for a cluster that is still starting anyway."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _refusal(address: str) -> str | None:
    """Ray's reason when this process has no usable token in token mode, or when the GCS at
    `address` refuses its token; else None."""
    try:  # Ray's own check and GCS client (its CLI uses both): private, hence the guard
        from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:
        return None
    try:
        # first what ray.init checks first: in token mode with no token (or RAY_AUTH_TOKEN_PATH
        # naming a missing or empty file) Ray's GCS client aborts the whole process
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
        GcsClient(address=address)
    except AuthenticationError as e:
        return e.message
    except Exception:  # not a refusal: ray.init retries and reports it
        return None
    return None
