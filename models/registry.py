"""Models taken from an MLflow model registry: `models:/NAME@ALIAS` or `models:/NAME/VERSION`.

A registered version's artifacts hold a batchscore checkpoint (`models.checkpoint`: the
directory with batchscore.json, or one bare .safetensors/.pt/.ts/.pt2 file). They are fetched
with MLflow's artifact download API and loaded by batchscore's own loaders: nothing is unpickled
(no `mlflow.pytorch.load_model`).

An alias is resolved once, on the driver, to a `RegistryVersion`: the concrete version and the
sha256 of its artifacts (`tree_sha256`). Every other process loads that exact version, and
refuses artifacts whose checksum differs: the alias may move during the run, the run's model
does not. Downloads go to a cache per machine, one folder per (server, name, version, checksum),
written to a temporary folder and renamed into place once whole; the driver reuses a version's
recorded download (its checksum verified again, the server's listing unchanged) instead of
downloading it on every run.

The server is model.tracking_uri or MLFLOW_TRACKING_URI; credentials come from MLflow's own
environment variables (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD), never from the
config. MLflow is an optional dependency: `pip install 'batchscore[mlflow]'`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from models.imports import ModelError

log = logging.getLogger("batchscore")

SCHEME = "models:/"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
CACHE_ENV = "BATCHSCORE_MODEL_CACHE"
_NAME = r"[^/@]+"
_ALIAS_RE = re.compile(rf"^models:/({_NAME})@([A-Za-z0-9_-]+)$")
_VERSION_RE = re.compile(rf"^models:/({_NAME})/(\d+)$")
_MODEL_SUFFIXES = (".safetensors", ".pt", ".ts", ".torchscript", ".pt2")


class RegistryError(ModelError):
    """The registry answered, but not with a usable model: unknown name, alias or version, or
    artifacts without a batchscore checkpoint (exit 2: the config or the registry is to fix)."""


class RegistryUnreachableError(RegistryError):
    """The registry did not answer (exit 1, as an unreachable output: try again later)."""

    exit_code = 1  # pipeline.errors.EXIT_FAILED (models/ does not import the pipeline)


def is_registry_uri(uri: str) -> bool:
    return uri.startswith(SCHEME)


@dataclass(frozen=True)
class RegistryRef:
    """What a `models:/` URI names: a version, or an alias to resolve."""

    uri: str
    name: str
    version: str | None = None
    alias: str | None = None


def parse_uri(uri: str) -> RegistryRef:
    m = _ALIAS_RE.match(uri)
    if m:
        return RegistryRef(uri, m[1], alias=m[2])
    m = _VERSION_RE.match(uri)
    if m:
        return RegistryRef(uri, m[1], version=m[2])
    raise ModelError(
        f"model.uri {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION (a version is a number)"
    )


@dataclass(frozen=True)
class RegistryVersion:
    """The version a run scores with: resolved once on the driver, loaded by every process."""

    uri: str  # as configured: models:/ranker@champion
    name: str
    version: str
    alias: str | None
    checksum: str  # sha256 of the version's artifacts (tree_sha256)
    tracking_uri: str

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def record(self) -> dict[str, Any]:
        """What reports and commit metadata show (not the server: its address is deployment)."""
        return {
            "uri": self.uri,
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "checksum": self.checksum,
        }

    def described(self) -> str:
        return f"{self.uri} (version {self.version})" if self.alias else self.uri


def tracking_uri_of(configured: str | None, uri: str) -> str:
    found = configured or os.environ.get(TRACKING_ENV, "")
    if not found:
        raise ModelError(
            f"model.uri {uri}: no MLflow registry to ask: set {TRACKING_ENV} (or model.tracking_uri) "
            "to the tracking server, e.g. http://mlflow.internal:5000"
        )
    return found


def _mlflow_client(tracking_uri: str) -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ModelError(
            "model.uri models:/...: the MLflow client is not installed; pip install 'batchscore[mlflow]'"
        ) from None
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _registry_error(e: Exception, uri: str, tracking_uri: str, what: str) -> RegistryError:
    """A RestException is the server's answer: unknown name, alias or version (exit 2), or a
    refusal (exit 1, as storage that denies access); anything else (connection refused, timeouts,
    5xx after MLflow's retries) means it could not be asked (exit 1)."""
    from mlflow.exceptions import RestException

    code = getattr(e, "error_code", "")
    if isinstance(e, RestException) and code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return RegistryError(f"model.uri {uri}: {what} in the registry at {tracking_uri}: {e.message}")
    if isinstance(e, RestException):  # it answered, with a refusal (permissions) or its own failure
        return RegistryUnreachableError(
            f"model.uri {uri}: the MLflow registry at {tracking_uri} refused: {code}: {e.message}"
        )
    return RegistryUnreachableError(
        f"model.uri {uri}: the MLflow registry at {tracking_uri} could not be reached: "
        f"{type(e).__name__}: {str(e)[:300]}"
    )


def resolve_version(ref: RegistryRef, tracking_uri: str) -> str:
    """The concrete version an alias points at now (a version is checked to exist)."""
    client = _mlflow_client(tracking_uri)
    try:
        if ref.alias is not None:
            return str(client.get_model_version_by_alias(ref.name, ref.alias).version)
        return str(client.get_model_version(ref.name, ref.version).version)
    except Exception as e:
        what = f"no alias {ref.alias!r} of model {ref.name!r}" if ref.alias else "no such model version"
        raise _registry_error(e, ref.uri, tracking_uri, what) from None


def tree_sha256(directory: str) -> str:
    """sha256 over every file under `directory`: its relative path and its content's sha256."""
    from models.checkpoint import sha256_file

    h = hashlib.sha256()
    for base, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "batchscore-models", "registry")


def _cache_dir(tracking_uri: str, name: str, version: str, checksum: str) -> str:
    key = hashlib.sha256(f"{tracking_uri}|{name}|{version}".encode()).hexdigest()[:16]
    return os.path.join(cache_root(), f"{key}-{checksum[:16]}")


def _download(ref: RegistryRef, version: str, tracking_uri: str) -> tuple[str, str]:
    """(a new folder in the cache root, the version's artifacts in it); the caller places them."""
    client = _mlflow_client(tracking_uri)
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=cache_root())
    try:
        from mlflow.artifacts import download_artifacts

        source = client.get_model_version_download_uri(ref.name, version)
        dst = os.path.join(tmp, "a")
        got = download_artifacts(artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _registry_error(e, ref.uri, tracking_uri, f"version {version} has no artifacts") from None
    if os.path.isfile(got):  # a version whose source is one file
        os.makedirs(os.path.join(tmp, "d"))
        os.rename(got, os.path.join(tmp, "d", os.path.basename(got)))
        got = os.path.join(tmp, "d")
    return tmp, got


def _place(tmp: str, got: str, dest: str, checksum: str) -> None:
    """Move a download into its cache folder (another process may have put it there first). A
    folder there whose files changed since is replaced: the caller loads `dest`, not `got`."""
    if os.path.isdir(dest) and tree_sha256(dest) != checksum:
        shutil.rmtree(dest, ignore_errors=True)
    if not os.path.isdir(dest):
        with contextlib.suppress(OSError):
            os.rename(got, dest)
    shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_in(directory: str, uri: str) -> str:
    """The batchscore checkpoint among a version's artifacts: the folder itself (batchscore.json
    at the top), the one subfolder holding it, or the one bare model file."""
    from models.checkpoint import METADATA_FILE

    if os.path.isfile(os.path.join(directory, METADATA_FILE)):
        return directory
    entries = sorted(os.listdir(directory))
    subs = [e for e in entries if os.path.isfile(os.path.join(directory, e, METADATA_FILE))]
    if len(subs) == 1:
        return os.path.join(directory, subs[0])
    files = [e for e in entries if e.lower().endswith(_MODEL_SUFFIXES)]
    if len(files) == 1 and not subs:
        return os.path.join(directory, files[0])
    found = [os.path.relpath(os.path.join(b, f), directory) for b, _, fs in os.walk(directory) for f in fs]
    pickled = " (an MLflow flavor's pickled model is not loaded: register a batchscore checkpoint)"
    raise RegistryError(
        f"model.uri {uri}: the version's artifacts hold no batchscore checkpoint ({METADATA_FILE} at "
        f"the top or in one folder, or one .safetensors/.pt/.ts/.pt2 file); found {sorted(found)[:10]}"
        + (pickled if any(f.endswith("MLmodel") for f in found) else "")
    )


def _pinned_dir(pin: RegistryVersion) -> str:
    """The pinned version's artifacts, verified: from the cache, or downloaded again."""
    dest = _cache_dir(pin.tracking_uri, pin.name, pin.version, pin.checksum)
    if os.path.isdir(dest):
        if tree_sha256(dest) == pin.checksum:
            return dest
        shutil.rmtree(dest, ignore_errors=True)  # changed on disk: fetched again below
    ref = RegistryRef(pin.uri, pin.name, version=pin.version, alias=pin.alias)
    tmp, got = _download(ref, pin.version, pin.tracking_uri)
    actual = tree_sha256(got)
    if actual != pin.checksum:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RegistryError(
            f"model.uri {pin.uri}: the artifacts of {pin.pinned_uri} have sha256 {actual}, but this run "
            f"resolved them with {pin.checksum}: they changed since; refusing to load"
        )
    _place(tmp, got, dest, pin.checksum)
    return dest


def fetch(
    uri: str, tracking_uri: str | None = None, pinned: RegistryVersion | None = None
) -> tuple[str, RegistryVersion]:
    """The checkpoint on local disk and the version it is. Without `pinned` (the driver): the
    alias resolved now; the version's artifacts taken from this machine's cache when a download
    of them is recorded there, the copy still has the recorded checksum and the server lists the
    same files at the same sizes; else downloaded and their checksum taken. With it (any other
    process): that exact version, from the cache or downloaded, its checksum verified."""
    if pinned is not None:
        return checkpoint_in(_pinned_dir(pinned), uri), pinned
    ref = parse_uri(uri)
    tracking = tracking_uri_of(tracking_uri, uri)
    version = resolve_version(ref, tracking)
    cached = _cached(ref, version, tracking)
    if cached is not None:
        dest, checksum = cached
        log.info("model %s: version %s from the cache %s (checksum verified)", uri, version, dest)
    else:
        tmp, got = _download(ref, version, tracking)
        checksum, files = tree_sha256(got), _sizes(got)
        dest = _cache_dir(tracking, ref.name, version, checksum)
        _place(tmp, got, dest, checksum)
        _remember(tracking, ref.name, version, checksum, files)
    pin = RegistryVersion(uri, ref.name, version, ref.alias, checksum, tracking)
    return checkpoint_in(dest, uri), pin


def _record_path(tracking_uri: str, name: str, version: str) -> str:
    key = hashlib.sha256(f"{tracking_uri}|{name}|{version}".encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "versions", f"{key}.json")


def _sizes(directory: str) -> dict[str, int]:
    """Each file's path under `directory` and its size."""
    out = {}
    for base, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, directory).replace(os.sep, "/")] = os.path.getsize(path)
    return out


def _remember(tracking_uri: str, name: str, version: str, checksum: str, files: dict[str, int]) -> None:
    """Record a placed download (written to a temporary file, then renamed: a reader never sees
    half a record). Best effort: without it the next run downloads again."""
    path = _record_path(tracking_uri, name, version)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".record-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as f:
            json.dump({"checksum": checksum, "files": files}, f)
        os.replace(tmp, path)


def _server_files(source: str, tracking_uri: str) -> dict[str, int | None]:
    """The version's artifact files as the server lists them (path -> size; no download)."""
    from mlflow.artifacts import list_artifacts

    out: dict[str, int | None] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        uri = f"{source.rstrip('/')}/{rel}" if rel else source
        for info in list_artifacts(artifact_uri=uri, tracking_uri=tracking_uri) or []:
            name = posixpath.join(rel, posixpath.basename(info.path.rstrip("/")))
            if info.is_dir:
                todo.append(name)
            else:
                out[name] = info.file_size
    return out


def _cached(ref: RegistryRef, version: str, tracking_uri: str) -> tuple[str, str] | None:
    """(cache folder, checksum) of this version's recorded download, when the folder still has
    the recorded checksum (every file read and hashed again: a copy changed or cut short is not
    used) and the server lists the same files at the same sizes (artifacts replaced under the
    same version are downloaded again). None: download."""
    try:
        with open(_record_path(tracking_uri, ref.name, version)) as f:
            record = json.load(f)
        checksum, files = record["checksum"], record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    dest = _cache_dir(tracking_uri, ref.name, version, checksum)
    if not os.path.isdir(dest) or _sizes(dest) != files or tree_sha256(dest) != checksum:
        return None
    try:
        client = _mlflow_client(tracking_uri)
        listed = _server_files(client.get_model_version_download_uri(ref.name, version), tracking_uri)
    except Exception as e:  # the download that follows says what is wrong, if anything
        log.debug("model %s: could not list version %s's artifacts: %s", ref.uri, version, e)
        return None
    if listed.keys() != files.keys() or any(v is not None and v != files[k] for k, v in listed.items()):
        log.info("model %s: version %s's artifacts on the server differ from the cache", ref.uri, version)
        return None
    return dest, checksum


EXPERIMENT = "batchscore"


def _create_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import RestException

    try:
        client.create_registered_model(name)
    except RestException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def register(
    checkpoint: str,
    name: str,
    *,
    alias: str | None = None,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    """Log a checkpoint folder as an MLflow run's artifacts (experiment `batchscore`), register
    them as a new version of `name` (the model is created on first use), point `alias` at it;
    returns the version. The artifacts are the checkpoint's files as they are: no MLflow flavor."""
    uri = f"models:/{name}"
    if not re.fullmatch(_NAME, name):
        raise ModelError(f"--register {name!r}: a registered model's name has no '/' or '@'")
    tracking = tracking_uri_of(tracking_uri, uri)
    client = _mlflow_client(tracking)
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)
        run = client.create_run(exp_id, tags={"batchscore.checkpoint": os.path.abspath(checkpoint)})
        run_id = run.info.run_id
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, float(value))
        client.log_artifacts(run_id, checkpoint, "checkpoint")
        client.set_terminated(run_id)
        _create_registered_model(client, name)
        mv = client.create_model_version(
            name, f"{run.info.artifact_uri}/checkpoint", run_id=run_id, tags=tags or {}
        )
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
    except Exception as e:
        raise _registry_error(e, uri, tracking, "could not register") from None
    return str(mv.version)
