"""infra/ manifests: valid against KubeRay's CRD schemas (strictly: a field the operator would
silently drop is an error here), entrypoints that name real CLI commands and configs."""

from __future__ import annotations

import copy
import json
import shlex
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from jobs.cli import COMMANDS, build_parser
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]
# KubeRay v1.7.0 CRDs (Apache-2.0), vendored from the workplace's shared schemas so the test
# never depends on what lies beside the checkout.
SCHEMAS = ROOT / "tests" / "data" / "kuberay"
CRDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
MANIFESTS = sorted((ROOT / "infra" / "k8s").glob("*.yaml"))


def _strict(schema):
    """Reject unknown fields wherever the schema lists the known ones."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(kind: str) -> dict:
    path = SCHEMAS / CRDS[kind]
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


def _docs():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def test_there_are_manifests_for_cluster_job_and_cronjob():
    kinds = {doc["kind"] for _, doc in _docs()}
    assert kinds == {"RayCluster", "RayJob", "RayCronJob"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_crd(path):
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["apiVersion"] == "ray.io/v1"
        assert doc["metadata"]["name"]
        jsonschema.validate(doc, crd_schema(doc["kind"]))


def test_strict_validation_catches_a_misspelled_field():
    doc = yaml.safe_load((ROOT / "infra" / "k8s" / "rayjob.yaml").read_text())
    bad = copy.deepcopy(doc)
    bad["spec"]["shutdownAfterJobFinish"] = bad["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate(bad, crd_schema("RayJob"))
    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("RayJob"))


def _entrypoints():
    for path, doc in _docs():
        spec = doc["spec"]
        if doc["kind"] == "RayJob":
            yield path.name, spec["entrypoint"]
        elif doc["kind"] == "RayCronJob":
            yield path.name, spec["jobTemplate"]["entrypoint"]


@pytest.mark.parametrize("name,entrypoint", list(_entrypoints()))
def test_entrypoints_run_real_commands_on_real_configs(name, entrypoint):
    argv = shlex.split(entrypoint)
    if argv[:2] == ["python", "-m"]:
        module = argv[2]
        assert module.startswith("jobs."), f"{name}: entrypoint must run a jobs.* module: {entrypoint}"
        command, rest = module.split(".", 1)[1], argv[3:]
        assert (ROOT / "jobs" / f"{command}.py").exists(), f"{name}: no module {module}"
    else:
        assert argv[0] == "batchscore", entrypoint
        command, rest = argv[1], argv[2:]
    assert command in COMMANDS, f"{name}: {command!r} is not a batchscore command"
    args = build_parser().parse_args([command, *rest])  # unknown flags fail here
    config = ROOT / args.config
    assert config.exists(), f"{name}: config {args.config} does not exist"
    load_config(config)


def test_vm_cluster_config_validates_against_rays_schema():
    setup = " ".join(yaml.safe_load((ROOT / "infra" / "vm" / "cluster.yaml").read_text())["setup_commands"])
    assert '".[cluster,mlflow]"' in setup  # as the image: every node can fetch a registered model
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "infra" / "vm" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]


def test_dockerfile_is_cuda_based_non_root_and_installs_the_project_with_the_registry_client():
    text = (ROOT / "infra" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("FROM nvidia/cuda:")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # the cluster extras and the MLflow client: replicas fetch `models:/` versions themselves
    assert any("pip install" in line and '".[cluster,mlflow]"' in line for line in lines)
    for pkg in ("pipeline", "models", "jobs", "configs"):
        assert any(line.startswith("COPY") and f"./{pkg}" in line for line in lines), pkg
