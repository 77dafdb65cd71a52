"""`batchscore submit --address http://HEAD:8265 CONFIG --date D | --start D1 --end D2`.

Submits the scoring job through Ray's Job API. The submission id is derived from the job name,
the dates, the scoring config and the model, so submitting the same work again while it runs, or
after it succeeded, reports the existing job instead of running it twice. By default it follows
the job's logs and exits with its outcome (0 succeeded, 1 otherwise); `--no-wait` returns the id.

The project directory is shipped as the job's working_dir (without .venv, data, caches, and
never .env, .aws/, *.pem, .netrc or other credential files). The resolved config travels as a
file inside that upload (not in the job's environment or metadata, which the dashboard shows:
model.kwargs may hold secrets), so a config file outside the project works too. The module of a
model.class_path or preprocessing.function beside the config or in the working directory is
shipped with it (py_modules), as `score` imports it there. Credentials are never shipped: the
cluster's nodes get them from their own environment or instance role.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUBMIT_DIR = ".batchscore-submit"
# Never uploaded, wherever they are in the tree: credentials and keys.
SECRET_EXCLUDES = [
    ".env",
    ".env.*",
    ".aws",
    "*.pem",
    "*.key",
    ".netrc",
    ".git-credentials",
    "id_rsa*",
    "id_ed25519*",
]
EXCLUDES = [
    *SECRET_EXCLUDES,
    ".venv",
    ".git",
    "demo",
    "data",
    "runs",
    "bench-data",
    ".gpu",
    ".whl",
    ".gl",
    "**/__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def auth_headers() -> dict[str, str]:
    """Ray token authentication: the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token (Ray's own order), sent as a bearer token to the job server."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        if os.path.exists(path):
            token = Path(path).read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def model_identity(cfg) -> dict[str, str]:
    """Model version and sha256 without downloading the weights: a checkpoint's metadata file,
    else what the config says."""
    from pipeline.storage import exists, read_bytes, resolve

    loc = resolve(cfg.model.uri, cfg.storage)
    meta = loc.join("batchscore.json")
    if exists(meta):
        rec = json.loads(read_bytes(meta))
        return {"version": cfg.model.version or rec.get("version", ""), "sha256": rec.get("sha256", "")}
    return {
        "version": cfg.model.version or cfg.model.uri.rsplit("/", 1)[-1],
        "sha256": cfg.model.sha256 or "",
    }


LOCAL_PATH_KEYS = ("input.uri", "model.uri", "output.uri")


def absolute_local_paths(cfg, address: str):
    """The config with its relative local paths made absolute, as the client resolved them: the
    job runs inside the uploaded working_dir, where `demo/model` would name another (missing)
    path. A local path only works on a cluster whose machines all see it (one machine, or a
    shared filesystem at the same path): a warning says so when the cluster is not local."""
    import os
    from urllib.parse import urlparse

    from pipeline.config import config_from_dict
    from pipeline.storage import is_s3

    raw = cfg.model_dump(mode="json")
    local_cluster = urlparse(address).hostname in ("127.0.0.1", "localhost", "::1")
    for key in LOCAL_PATH_KEYS:
        section, name = key.split(".")
        value = raw[section][name]
        if is_s3(value):
            continue
        raw[section][name] = os.path.abspath(os.path.expanduser(value.removeprefix("file://")))
        if not local_cluster:
            print(
                f"warning: {key} is a local path ({raw[section][name]}); the job's workers on other "
                "machines can read it only from a shared filesystem mounted at the same path",
                file=sys.stderr,
            )
    return config_from_dict(raw, source="the submitted config")


def submission_id(cfg, dates: list[str], model: dict[str, str]) -> str:
    from models.imports import source_digest

    parts: dict[str, Any] = {"dates": dates, "scoring": cfg.scoring_digest(), "model": model}
    code = source_digest([p for p in (cfg.model.class_path, cfg.preprocessing.function) if p])
    if code:  # an edit of the model's code is new work, as it is a new scoring identity
        parts["code"] = code
    what = json.dumps(parts, sort_keys=True)
    return f"batchscore-{cfg.name}-{hashlib.sha256(what.encode()).hexdigest()[:12]}"


def user_code(cfg) -> list[str]:
    """The modules or packages that model.class_path and preprocessing.function name, where they
    live outside the project root (beside the config, in the working directory): shipped as
    py_modules, so the job imports them as `score` on this machine does. Those at the project
    root travel with the working_dir; installed packages must be installed on the cluster."""
    from models.imports import searched_folders, top_level_location

    folders = [f for f in searched_folders() if Path(f).resolve() != PROJECT_ROOT]
    found = []
    for path in (cfg.model.class_path, cfg.preprocessing.function):
        where = top_level_location(path) if path else None
        if where and any(Path(where).resolve().parent == Path(f).resolve() for f in folders):
            found.append(where)
    return sorted(set(found))


def as_packages(paths: list[str], scratch: str) -> list[str]:
    """py_modules entries the Job API can upload: it takes directories only (a single .py file
    fails in Ray 2.60's job SDK), so a module file goes as a package of the same name whose
    __init__.py is the file: `import name` and `name:Class` work the same on the cluster."""
    import shutil

    shipped = []
    for path in paths:
        if os.path.isdir(path):
            shipped.append(path)
            continue
        package = Path(scratch) / Path(path).stem
        package.mkdir()
        shutil.copyfile(path, package / "__init__.py")
        shipped.append(str(package))
    return shipped


def runtime_env(deps: str, image: str | None, py_modules: list[str] | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "working_dir": str(PROJECT_ROOT),
        "excludes": EXCLUDES,
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }
    if py_modules:
        env["py_modules"] = list(py_modules)
    if image:
        env["image_uri"] = image
    elif deps == "pyproject":
        import tomllib

        project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
        env["pip"] = list(project["dependencies"])
    return env


def date_args(dates: list[str]) -> list[str]:
    out: list[str] = []
    for d in dates:
        out += ["--date", d]
    return out


def follow(client, job_id: str, poll_s: float = 1.0) -> str:
    """Print the job's log as it grows; return its final status."""
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def _submit_new(client, args: argparse.Namespace, cfg, job_id: str, dates: list[str], model: dict) -> str:
    """Submit the job (config, user code and project uploaded); returns its entrypoint."""
    from pipeline.config import dump_config

    shipped = Path(SUBMIT_DIR) / f"{job_id}.yaml"
    entrypoint = shlex.join(["python", "-m", "jobs.score", shipped.as_posix(), *date_args(dates)])
    local = PROJECT_ROOT / shipped
    local.parent.mkdir(exist_ok=True)
    local.write_text(dump_config(cfg, redact=False))
    local.chmod(0o600)
    scratch = tempfile.TemporaryDirectory(prefix="batchscore-submit-")
    try:  # the upload of the working_dir and py_modules happens inside submit_job
        client.submit_job(
            entrypoint=entrypoint,
            submission_id=job_id,
            runtime_env=runtime_env(args.deps, args.image, as_packages(user_code(cfg), scratch.name)),
            metadata={
                "batchscore_job": cfg.name,
                "dates": ",".join(dates),
                "model_version": model["version"],
                "scoring_hash": cfg.scoring_digest(),
            },
        )
    finally:
        local.unlink(missing_ok=True)
        scratch.cleanup()
    return entrypoint


def submit(args: argparse.Namespace) -> dict[str, Any]:
    from ray.job_submission import JobSubmissionClient

    from jobs.common import resolve_dates
    from pipeline.config import load_config

    cfg = absolute_local_paths(load_config(args.config, args.overrides), args.address)
    dates = resolve_dates(args, cfg)
    model = model_identity(cfg)
    sid = submission_id(cfg, dates, model)
    client = JobSubmissionClient(args.address, headers=auth_headers())

    ours = [
        j
        for j in client.list_jobs()
        if j.submission_id and (j.submission_id == sid or j.submission_id.startswith(sid + "-r"))
    ]
    active = [j for j in ours if str(j.status.value) in ("PENDING", "RUNNING")]
    succeeded = [j for j in ours if str(j.status.value) == "SUCCEEDED"]
    result: dict[str, Any] = {"submission_id": sid, "dates": dates, "model": model}
    if active:
        job_id = active[0].submission_id
        print(f"already running: {job_id} (same config, dates and model); following it")
        result.update(submission_id=job_id, submitted=False)
    elif succeeded:
        print(
            f"already succeeded: {succeeded[0].submission_id} (same config, dates and model); nothing to do"
        )
        result.update(submission_id=succeeded[0].submission_id, submitted=False, status="SUCCEEDED")
        return result
    else:
        job_id = sid if not ours else f"{sid}-r{len(ours) + 1}"
        entrypoint = _submit_new(client, args, cfg, job_id, dates, model)
        print(f"submitted {job_id} to {args.address}: {entrypoint}")
        result.update(submission_id=job_id, submitted=True)
    if args.no_wait:
        result["status"] = str(client.get_job_status(job_id).value)
        return result
    result["status"] = follow(client, job_id)
    print(f"job {job_id}: {result['status']}")
    return result


if __name__ == "__main__":  # `python -m jobs.submit ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("submit")
