"""Registry model uris without a server: how `models:/...` is read and checked in the config, the
scoring identity of a registry model, where the checkpoint is found among a version's artifacts,
and the artifacts' checksum. (tests/integration/test_registry.py runs a real MLflow server.)"""

from __future__ import annotations

import json

import pytest

from models.imports import ModelError
from models.registry import (
    RegistryError,
    RegistryRef,
    checkpoint_in,
    parse_uri,
    tracking_uri_of,
    tree_sha256,
)
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError


def _raw(**model):
    return {
        "name": "reg",
        "input": {"uri": "/data/events"},
        "model": {"uri": "models:/ranker@champion", **model},
        "output": {"uri": "/data/preds", "key_columns": ["event_id"]},
    }


def test_uris_name_an_alias_or_a_version():
    assert parse_uri("models:/ranker@champion") == RegistryRef(
        "models:/ranker@champion", "ranker", alias="champion"
    )
    assert parse_uri("models:/ranker/12") == RegistryRef("models:/ranker/12", "ranker", version="12")
    for bad in ("models:/ranker", "models:/ranker/latest", "models:/a/b/1", "models:/@x"):
        with pytest.raises(ModelError, match="models:/NAME@ALIAS or models:/NAME/VERSION"):
            parse_uri(bad)


def test_the_config_refuses_a_malformed_uri_and_credentials_in_the_server():
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(uri="models:/ranker/latest", tracking_uri="https://me:secret@mlflow:5000"))
    text = str(err.value)
    assert "2 error(s)" in text and "model.uri" in text and "model.tracking_uri" in text
    assert "secret" not in text  # the error names the key, never the value
    assert (
        config_from_dict(_raw(tracking_uri="http://mlflow:5000")).model.tracking_uri == "http://mlflow:5000"
    )


def test_the_identity_is_the_name_not_the_alias_nor_the_server():
    by_alias = config_from_dict(_raw())
    by_version = config_from_dict(_raw(uri="models:/ranker/3", tracking_uri="http://elsewhere:5000"))
    other = config_from_dict(_raw(uri="models:/ranker2@champion"))
    assert by_alias.scoring_digest() == by_version.scoring_digest() != other.scoring_digest()


def test_a_path_model_keeps_its_identity():
    # tracking_uri is new: a config without it must keep the digest it committed dates with
    raw = _raw(uri="/models/ckpt")
    cfg = config_from_dict(raw)
    assert cfg.model.identity() == cfg.model.model_dump(mode="json", exclude={"tracking_uri"})
    assert cfg.model.registry_name is None


def test_no_server_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ModelError, match="models:/ranker@champion: no MLflow registry to ask"):
        tracking_uri_of(None, "models:/ranker@champion")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking_uri_of(None, "u") == "http://env:5000"
    assert tracking_uri_of("http://config:5000", "u") == "http://config:5000"


def test_the_checkpoint_among_the_artifacts(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    (top / "batchscore.json").write_text("{}")
    assert checkpoint_in(str(top), "u") == str(top)
    nested = tmp_path / "nested"
    (nested / "checkpoint").mkdir(parents=True)
    (nested / "checkpoint" / "batchscore.json").write_text("{}")
    (nested / "README.md").write_text("notes")
    assert checkpoint_in(str(nested), "u") == str(nested / "checkpoint")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.pt2").write_bytes(b"x")
    assert checkpoint_in(str(bare), "u") == str(bare / "model.pt2")
    flavor = tmp_path / "flavor"
    (flavor / "data").mkdir(parents=True)
    (flavor / "MLmodel").write_text("flavors: {}")
    (flavor / "data" / "model.pth").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match=r"models:/r/1: .*no batchscore checkpoint.*pickled"):
        checkpoint_in(str(flavor), "models:/r/1")


def test_the_checksum_covers_names_and_contents(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "batchscore.json").write_text(json.dumps({"x": 1}))
    (a / "sub" / "w").write_bytes(b"weights")
    first = tree_sha256(str(a))
    assert len(first) == 64 and tree_sha256(str(a)) == first
    (a / "sub" / "w").write_bytes(b"weightz")
    assert tree_sha256(str(a)) != first
    (a / "sub" / "w").write_bytes(b"weights")
    (a / "sub" / "w").rename(a / "sub" / "v")
    assert tree_sha256(str(a)) != first


def test_the_registry_version_is_not_saved_in_a_checkpoint(tmp_path):
    from models.checkpoint import CheckpointMeta

    meta = CheckpointMeta(
        format="export", weights="model.pt2", sha256="0" * 64, version="v", registry=object()
    )
    assert "registry" not in meta.saved()
