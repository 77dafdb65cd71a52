"""All path handling goes through here: local paths and s3:// URIs behave the same.

S3 (and S3-compatible servers) use pyarrow's native S3FileSystem. Credentials are never passed
explicitly: they come from the environment or the AWS provider chain in whichever process
touches storage, so they are not pickled into Ray tasks, logged or written to reports.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import InputError
from pipeline.raystate import running_ray


class StorageSettings(Protocol):
    """What opening a URI needs of the job's `storage` section: its StorageConfig on the driver,
    a StorageOptions in what is sent to workers."""

    endpoint_url: str | None
    region: str
    anonymous: bool


@dataclass(frozen=True)
class StorageOptions:
    """The `storage` section's values without its pydantic model, for objects sent to the scoring
    replicas: unpickling a StorageConfig there imported pipeline.config, 30 ms of each replica's
    start before its first batch (pydantic itself is imported by Ray's serializer anyway)."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    anonymous: bool = False

    @classmethod
    def of(cls, storage: StorageSettings | None) -> StorageOptions:
        if storage is None:
            return cls()
        return cls(storage.endpoint_url, storage.region, storage.anonymous)


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem and the path inside it (no scheme)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = posixpath.join(self.uri, *parts)
        return Location(self.fs, path, uri)


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def s3_filesystem(
    storage: StorageSettings, max_attempts: int = 10, connect_timeout: float = 10
) -> pafs.S3FileSystem:
    """Retries (throttling, 5xx, dropped connections) are the SDK's standard strategy."""
    kwargs: dict = {
        "region": storage.region,
        "anonymous": storage.anonymous,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
        "connect_timeout": connect_timeout,
        "request_timeout": 60,
    }
    if storage.endpoint_url:
        parsed = urlparse(storage.endpoint_url)
        if not parsed.scheme or not parsed.netloc:
            raise InputError(
                f"storage.endpoint_url: expected http(s)://host:port, got {storage.endpoint_url!r}"
            )
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, storage: StorageSettings | None = None, quick: bool = False) -> Location:
    """`quick`: few retries and a short connect timeout, for probes that must fail fast."""
    storage = storage or StorageOptions()
    if is_s3(uri):
        path = uri.split("://", 1)[1].rstrip("/")
        if not path or path.startswith("/"):
            raise InputError(f"{uri}: expected s3://bucket/prefix")
        fs = s3_filesystem(storage, max_attempts=5, connect_timeout=3) if quick else s3_filesystem(storage)
        return Location(fs, path, "s3://" + path)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise InputError(f"{uri}: unsupported scheme; expected a local path or s3://bucket/prefix")
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(pafs.LocalFileSystem(), path, path)


def exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def is_dir(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory


def list_files(loc: Location, suffix: str = "", recursive: bool = True) -> list[pafs.FileInfo]:
    """Files under a directory, sorted by path; hidden and _-prefixed names are skipped."""
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=recursive, allow_not_found=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(suffix):
            continue
        rel = posixpath.relpath(info.path, loc.path)
        if any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        out.append(info)
    return sorted(out, key=lambda i: i.path)


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole object. Locally via a temp file + rename, so readers never see half a file
    (an S3 PUT is atomic by itself)."""
    parent = posixpath.dirname(loc.path)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        os.makedirs(parent, exist_ok=True)
        # Not mkstemp: it creates 0600 files, and a report or a checkpoint must be readable by
        # the other users the umask allows (a scoring service, a dashboard), as Parquet files are.
        tmp = os.path.join(parent, f".tmp-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, loc.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    with loc.fs.open_output_stream(loc.path) as f:
        f.write(data)


def probe_writable(root: Location, name: str) -> None:
    """Write and delete the object `name` under `root` (raises OSError when that fails). Local
    folders the probe had to create are removed again: a run refused after its probe (exit 2)
    leaves no empty output folder behind. Only empty ones: another run may have filled them."""
    created = []
    if isinstance(root.fs, pafs.LocalFileSystem):
        folder = root.path
        while folder and not os.path.exists(folder):
            created.append(folder)
            folder = os.path.dirname(folder.rstrip("/"))
    probe = root.join(name)
    try:
        write_bytes(probe, b"")
        probe.fs.delete_file(probe.path)
    finally:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def delete_dir(loc: Location) -> None:
    if exists(loc):
        loc.fs.delete_dir(loc.path)


def download_dir(loc: Location, dest: str) -> str:
    """Copy a file or a directory tree (e.g. a checkpoint on S3) to a local path."""
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{loc.uri}: does not exist")
    if info.type == pafs.FileType.File:
        target = os.path.join(dest, posixpath.basename(loc.path))
        os.makedirs(dest, exist_ok=True)
        pafs.copy_files(
            loc.path,
            target,
            source_filesystem=loc.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return target
    os.makedirs(dest, exist_ok=True)
    pafs.copy_files(loc.path, dest, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


def map_files(fn, fs: pafs.FileSystem, paths: list[str], *args, on_ray: bool = True) -> list:
    """`fn(fs, path, *args)` for each path: one Ray task per file when Ray is running and
    `on_ray` (a few numbers come back per file, never its rows), inline otherwise."""
    if not paths:
        return []
    ray = running_ray() if on_ray else None
    if ray is None:
        return [fn(fs, p, *args) for p in paths]
    # OSError: a storage error that got through the S3 client's own retries (seen: a HEAD answered
    # 503 with no body, which the AWS SDK does not retry) is retried as a whole task
    task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[OSError])(fn)
    fs_ref = ray.put(fs)
    return ray.get([task.remote(fs_ref, p, *args) for p in paths])
