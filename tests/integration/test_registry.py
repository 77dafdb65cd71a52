"""Models from an MLflow model registry (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) against a
real `mlflow server` the tests start (SQLite store, local artifacts; tests/mlflowserver.py):
registered by `batchscore train --register`, scored by alias, rescored when the alias moves (and
the report says why), pinned per run, and the errors that name the uri. No mocks."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest
import yaml
from support import DATES, KEYS, latest_commit, make_config, read_output, run_cli

from models.registry import CACHE_ENV, RegistryError, fetch, register, tree_sha256
from pipeline.errors import EXIT_FAILED, EXIT_USER, exit_code_of
from pipeline.run.score import run_score
from pipeline.stages.predict import ModelSource

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(mlflow_server, monkeypatch, tmp_path):
    """The server in the environment, as a job gets it; a model cache of the test's own; no
    retries of MLflow's HTTP client (an unreachable server fails at once)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "model-cache"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return mlflow_server


def _name() -> str:
    return f"ranker-{uuid.uuid4().hex[:8]}"  # the server lives for the session: a name per test


def _config(dataset: Path, uri: str, out: Path):
    return make_config(str(dataset), uri, str(out), ray={"runner": "local"}, drift={"enabled": False})


def _artifacts_sha256(client, name: str, version: str, dst: Path) -> str:
    """The checksum computed here, apart from batchscore's: each file's path and content sha256."""
    from mlflow.artifacts import download_artifacts

    source = client.get_model_version_download_uri(name, version)
    root = Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=client.tracking_uri))
    h = hashlib.sha256()
    for p in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if p.is_file():
            h.update(
                f"{p.relative_to(root).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode()
            )
    return h.hexdigest()


@pytest.mark.slow  # trains a model in a subprocess, then scores in another (about 30 s on 2 CPUs)
def test_train_registers_and_score_takes_the_alias(registry, dataset, tmp_path):
    name = _name()
    trained = run_cli(
        ["train", "--data", str(dataset), "--dates", DATES[0], "--out", str(tmp_path / "ckpt")]
        + ["--epochs", "1", "--register", name, "--alias", "champion"],
        ray_address=None,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"registered models:/{name}/1" in trained.stdout
    client = registry.client()
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    config = {
        "name": "registry",
        "input": {"uri": str(dataset)},
        "model": {"uri": f"models:/{name}@champion"},
        "output": {"uri": str(tmp_path / "preds"), "key_columns": KEYS},
    }
    path = tmp_path / "registry.yaml"
    path.write_text(f"# batchscore score {path.name} --date {DATES[0]}\n" + yaml.safe_dump(config))
    scored = run_cli(["score", str(path), "--date", DATES[0]], ray_address=None)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert f"from models:/{name}@champion = version 1" in scored.stdout
    record = latest_commit(str(tmp_path / "preds"), DATES[0])["model_registry"]
    want = _artifacts_sha256(client, name, "1", tmp_path / "check")
    assert record == {
        "uri": f"models:/{name}@champion",
        "name": name,
        "version": "1",
        "alias": "champion",
        "checksum": want,
    }


def test_an_alias_move_rescores_and_says_why(registry, dataset, checkpoints, tmp_path):
    name, out = _name(), tmp_path / "preds"
    client = registry.client()
    assert register(checkpoints.entries["safetensors"][0], name, alias="champion") == "1"
    cfg = _config(dataset, f"models:/{name}@champion", out)
    first = run_score(cfg, [DATES[0]])
    assert first.status == "succeeded" and first.model.registry.version == "1"
    assert first.model.registry.checksum == _artifacts_sha256(client, name, "1", tmp_path / "v1")
    committed = latest_commit(str(out), DATES[0])
    assert committed["model_registry"]["version"] == "1"
    assert committed["model_registry"]["checksum"] == first.model.registry.checksum
    # nothing moved: the date is committed as asked
    assert run_score(cfg, [DATES[0]]).skipped_committed == [DATES[0]]

    assert register(checkpoints.entries["torchscript"][0], name) == "2"
    client.set_registered_model_alias(name, "champion", "2")
    moved = run_score(cfg, [DATES[0]])
    assert moved.status == "succeeded" and moved.model.registry.version == "2"
    why = f"model changed: models:/{name}@champion now version 2 (was 1)"
    assert moved.rescored_because == {DATES[0]: why}
    saved = json.loads(Path(moved.report_uri).read_text())
    assert saved["rescored_because"][DATES[0]] == why and saved["model"]["registry"]["version"] == "2"
    page = Path(moved.report_uri).with_name("report.html").read_text()
    assert f"{DATES[0]}: {why}" in page and f"{name} version 2" in page
    assert latest_commit(str(out), DATES[0])["model_registry"]["version"] == "2"
    # the same version by number is the same model: committed as asked, not scored again
    by_version = run_score(_config(dataset, f"models:/{name}/2", out), [DATES[0]])
    assert by_version.skipped_committed == [DATES[0]]


@pytest.mark.slow  # a Ray Data job: about 30 s with the session's Ray up
def test_ray_workers_load_the_version_the_driver_pinned(
    registry, ray_cluster, dataset, checkpoints, tmp_path
):
    """Fused tasks in Ray's worker processes load the version the driver pinned (from the
    machine's cache, verified, or fetched by number) and score as the same checkpoint loaded
    from its path does."""
    name, out = _name(), tmp_path / "preds"
    register(checkpoints.entries["safetensors"][0], name, alias="champion")
    cfg = make_config(
        str(dataset), f"models:/{name}@champion", str(out), ray={"runner": "ray"}, predict={"mode": "fused"}
    )
    report = run_score(cfg, [DATES[0]])
    assert report.status == "succeeded" and report.pool.runner == "ray"
    assert latest_commit(str(out), DATES[0])["model_registry"]["version"] == "1"
    local = run_score(_config(dataset, checkpoints.entries["safetensors"][0], tmp_path / "path"), [DATES[0]])
    by_key = {r["event_id"]: r["score"] for r in read_output(str(out), DATES[0]).to_pylist()}
    direct = {r["event_id"]: r["score"] for r in read_output(str(tmp_path / "path"), DATES[0]).to_pylist()}
    assert local.status == "succeeded" and by_key == direct


def test_a_version_number_scores_that_version(registry, dataset, checkpoints, tmp_path):
    name = _name()
    register(checkpoints.entries["export"][0], name)
    register(checkpoints.entries["safetensors"][0], name, alias="champion")
    report = run_score(_config(dataset, f"models:/{name}/1", tmp_path / "preds"), [DATES[1]])
    assert report.status == "succeeded"
    assert (report.model.registry.version, report.model.registry.alias) == ("1", None)
    assert report.model.format == "export"


def test_each_process_loads_the_pinned_version_and_verifies_it(registry, checkpoints, monkeypatch, tmp_path):
    name = _name()
    register(checkpoints.entries["safetensors"][0], name, alias="champion")
    path, pin = fetch(f"models:/{name}@champion")
    assert (pin.version, pin.pinned_uri) == ("1", f"models:/{name}/1")
    register(checkpoints.entries["torchscript"][0], name, alias="champion")  # the alias moves on
    # a replica with the run's pin loads version 1, whatever the alias says now
    source = ModelSource(f"models:/{name}@champion", registry=pin)
    assert source.inspect()[0].format == "safetensors"
    # on another machine (an empty cache): downloaded again, by version, and verified
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other-node"))
    again, same = fetch(f"models:/{name}@champion", pinned=pin)
    assert same == pin and again.startswith(str(tmp_path / "other-node"))
    # a cached copy changed on disk is fetched again
    with open(os.path.join(again, "batchscore.json"), "a") as f:
        f.write(" ")
    assert fetch(f"models:/{name}@champion", pinned=pin)[0] == again
    # artifacts that differ from what the driver resolved are refused
    wrong = type(pin)(**{**pin.__dict__, "checksum": "0" * 64})
    with pytest.raises(RegistryError, match="changed since; refusing to load"):
        fetch(f"models:/{name}@champion", pinned=wrong)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("@nosuchalias", "no alias 'nosuchalias'"),
        ("/7", "no such model version"),
    ],
)
def test_unknown_alias_or_version_names_the_uri(registry, checkpoints, suffix, message):
    name = _name()
    register(checkpoints.entries["safetensors"][0], name, alias="champion")
    uri = f"models:/{name}{suffix}"
    with pytest.raises(RegistryError, match=message) as err:
        ModelSource(uri).inspect()
    assert uri in str(err.value) and exit_code_of(err.value) == EXIT_USER


def test_unknown_model_from_the_cli_exits_2(registry, dataset, tmp_path):
    uri = f"models:/{_name()}@champion"
    config = {
        "name": "registry",
        "input": {"uri": str(dataset)},
        "model": {"uri": uri},
        "output": {"uri": str(tmp_path / "preds"), "key_columns": KEYS},
    }
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli(["score", str(path), "--date", DATES[0]], ray_address=None)
    assert proc.returncode == EXIT_USER, proc.stderr[-3000:]
    assert uri in proc.stderr and "Traceback" not in proc.stderr


def test_an_unreachable_registry_exits_1(registry, monkeypatch):
    from mlflowserver import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryError, match="could not be reached") as err:
        ModelSource("models:/ranker@champion").inspect()
    assert "models:/ranker@champion" in str(err.value) and exit_code_of(err.value) == EXIT_FAILED


def test_artifacts_without_a_checkpoint_are_refused(registry, tmp_path):
    name = _name()
    folder = tmp_path / "not-a-checkpoint"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model.pth").write_bytes(b"\x80\x04pickle")
    register(str(folder), name, alias="champion")
    with pytest.raises(RegistryError, match="hold no batchscore checkpoint") as err:
        ModelSource(f"models:/{name}@champion").inspect()
    assert f"models:/{name}@champion" in str(err.value) and "pickled" in str(err.value)
    assert exit_code_of(err.value) == EXIT_USER


def test_the_driver_reuses_its_cached_download_of_a_version(registry, checkpoints, monkeypatch, tmp_path):
    """A nightly rerun resolves the alias (one call) and takes the version it names from the
    machine's cache, its checksum verified; a copy changed or cut short, artifacts replaced on the
    server under the same version, or a moved alias, download again."""
    import shutil

    import mlflow.artifacts

    name = _name()
    register(checkpoints.entries["safetensors"][0], name, alias="champion")
    downloads: list[str] = []
    real = mlflow.artifacts.download_artifacts

    def counted(*args, **kwargs):  # the real download from the real server, counted
        downloads.append(kwargs.get("artifact_uri", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counted)
    uri = f"models:/{name}@champion"
    path, pin = fetch(uri)
    assert len(downloads) == 1
    assert fetch(uri) == (path, pin) and len(downloads) == 1  # the rerun: no download

    with open(os.path.join(path, "batchscore.json"), "a") as f:  # changed on disk
        f.write(" ")
    assert fetch(uri) == (path, pin) and len(downloads) == 2
    assert tree_sha256(path) == pin.checksum  # the changed copy replaced by the download
    os.remove(os.path.join(path, "batchscore.json"))  # cut short
    assert fetch(uri) == (path, pin) and len(downloads) == 3
    assert fetch(uri) == (path, pin) and len(downloads) == 3 and tree_sha256(path) == pin.checksum
    # no half-written download is ever taken: only placed folders and the records are left
    cache = Path(os.environ[CACHE_ENV])
    assert not [p for p in cache.iterdir() if p.name.startswith(".download-")]

    # the version's artifacts replaced on the server (same version number): downloaded, a new checksum
    client = registry.client()
    changed = tmp_path / "changed"
    shutil.copytree(checkpoints.entries["safetensors"][0], changed)
    with open(changed / "batchscore.json", "a") as f:
        f.write("\n")
    client.log_artifacts(client.get_model_version(name, "1").run_id, str(changed), "checkpoint")
    _, replaced = fetch(uri)
    assert len(downloads) == 4 and replaced.version == "1" and replaced.checksum != pin.checksum
    assert replaced.checksum == _artifacts_sha256(client, name, "1", tmp_path / "check")

    register(checkpoints.entries["torchscript"][0], name, alias="champion")  # the alias moves
    _, moved = fetch(uri)
    assert moved.version == "2" and len(downloads) == 6  # downloaded (the check above made one)
    assert fetch(uri)[1] == moved and len(downloads) == 6
