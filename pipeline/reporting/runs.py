"""Run ids and where a run's report goes: OUTPUT/_runs/<run id>/report.json (the one place that
knows the format; the report command sorts runs by the start time in their ids)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

RUNS_DIR = "_runs"
REPORT_NAME = "report.json"
# _runs/<run id>/input_keys.<attempt>: the read tasks' key records (ReadKeys), one folder per
# attempt beside the run's report (so deleting it leaves no empty-folder marker on S3)
INPUT_KEYS_DIR = "input_keys"


def input_keys_dir(attempt: str) -> str:
    return f"{INPUT_KEYS_DIR}.{attempt}"


_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP = re.compile(r"-(\d{8}T\d{6}Z)-")
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # also a file-name part: nothing else


def bad_run_id(run_id: str) -> str | None:
    """Why `run_id` cannot be used, or None."""
    return None if RUN_ID.fullmatch(run_id) else f"{run_id!r}: use 1-128 letters, digits, '_' and '-'"


def new_run_id(job: str) -> str:
    """<job>-<UTC start, YYYYmmddTHHMMSSZ>-<6 hex>."""
    return f"{job}-{datetime.now(timezone.utc).strftime(_STAMP_FORMAT)}-{uuid.uuid4().hex[:6]}"


def run_stamp(run_id: str) -> str:
    """The UTC start encoded in a run id ('' for ids given by hand)."""
    m = _STAMP.search(run_id)
    return m.group(1) if m else ""
