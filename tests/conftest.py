"""Shared fixtures: real parts, started by the tests themselves.

- `s3`: moto's S3-compatible server on 127.0.0.1 over HTTP, in its own process (`moto_server`;
  delta-rs calls against a server inside the test process hang), reached through the same
  pyarrow S3FileSystem and delta-rs code paths production uses; only the endpoint differs.
- `ray_cluster`: one local Ray per session, a `ray.cluster_utils.Cluster` so tests can add and
  remove nodes (logical GPUs) without a second Ray.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from support import DATES, SMALL_FEATURES, SYNTH, Checkpoints

from jobs.synthetic import LABEL, generate_day, write_days
from pipeline.storage import resolve

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).resolve().parent / "integration" / "plugins"

# Credentials for the local S3 server come from the environment, as in production. They are set
# before Ray starts so its worker processes inherit them. The canary makes leaks detectable.
S3_ACCESS_KEY = "AKIATESTBATCHSCORE01"
S3_SECRET_KEY = "canary-secret-5f1c9e-do-not-log"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)
# Test-only plugins (a user preprocessing function) importable by Ray workers too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")] if p
)
sys.path.insert(0, str(PLUGINS))
# Where the `record_node_features` plug-in notes the node each preprocessing batch ran on; made
# by this session (Ray's workers inherit the variable) and removed at its end.
if "BATCHSCORE_TEST_NODE_LOG" not in os.environ:
    os.environ["BATCHSCORE_TEST_NODE_LOG"] = tempfile.mkdtemp(prefix="batchscore-nodes-")
    atexit.register(shutil.rmtree, os.environ["BATCHSCORE_TEST_NODE_LOG"], ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(
            o["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        )


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout_s} s")


@pytest.fixture(scope="session")
def s3():
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    head: dict = {"num_cpus": 3}
    try:  # a real GPU joins the head node, so the GPU tier can schedule on it
        import torch

        if torch.cuda.is_available():
            head["num_gpus"] = torch.cuda.device_count()
    except ImportError:
        pass
    cluster = Cluster(initialize_head=True, connect=True, head_node_args=head)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "events"
    write_days(resolve(str(root)), DATES, SYNTH)
    return root


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    import torch

    from models.checkpoint import save_checkpoint
    from models.training import train_dlrm

    root = tmp_path_factory.mktemp("models")
    table = generate_day("2026-09-30", SYNTH)
    result = train_dlrm(table, SMALL_FEATURES, LABEL, epochs=1, batch_size=512)
    example = (
        torch.zeros((4, len(result.spec.categorical)), dtype=torch.int64),
        torch.zeros((4, len(result.spec.dense)), dtype=torch.float32),
    )
    entries: dict[str, tuple[str, dict[str, Any]]] = {}
    for fmt in ("safetensors", "torchscript", "export"):
        save_checkpoint(
            str(root / fmt),
            result.model,
            format=fmt,
            version=f"test-{fmt}",
            feature_spec=result.spec,
            architecture=result.architecture,
            example_inputs=example,
            score_reference=result.score_reference,
        )
        entries[fmt] = (str(root / fmt), {})
    # A user's own nn.Module class by import path + bare safetensors weights; the feature spec
    # comes from the config (preprocessing.features), as it would for a model trained elsewhere.
    bare = root / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    shutil.copy(root / "safetensors" / "model.safetensors", bare)
    entries["class_path"] = (
        str(bare),
        {
            "model": {"class_path": "models.dlrm:DLRM", "kwargs": result.architecture["kwargs"]},
            "preprocessing": {"features": result.spec.to_dict()},
        },
    )
    return Checkpoints(root=root, entries=entries, spec=result.spec)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server and model registry (tests/mlflowserver.py), for the session."""
    pytest.importorskip("mlflow", reason="the registry tests need MLflow: pip install -e '.[dev]'")
    from mlflowserver import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()
