"""Unit tests for pipeline.config: shipped configs, strict keys, error reporting, --set, digest."""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    JobConfig,
    PredictConfig,
    StorageConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted([*REPO.glob("configs/*.yaml"), *REPO.glob("configs/*.yml")])

BASE = {
    "name": "unit",
    "input": {"uri": "/data/in", "partition_column": "ds"},
    "model": {"uri": "/models/m"},
    "output": {"uri": "/data/out", "key_columns": ["event_id"]},
}


def base() -> dict:
    return copy.deepcopy(BASE)


def write_yaml(tmp_path: Path, raw: dict | str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def error_lines(err: ConfigError) -> list[str]:
    return [line.strip() for line in str(err).splitlines()[1:]]


# ---------------------------------------------------------------------------------------------
# shipped configs
# ---------------------------------------------------------------------------------------------


def test_configs_directory_has_configs():
    assert CONFIG_FILES, f"no YAML files in {REPO / 'configs'}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, JobConfig)
    assert cfg.name
    assert cfg.output.key_columns


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_first_line_is_the_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name}: first line should be a comment with the command that runs it"
    assert "batchscore" in first, f"{path.name}: first line should name the batchscore command: {first!r}"


# ---------------------------------------------------------------------------------------------
# strict keys, error reporting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "key_path"),
    [
        (lambda r: r.update(bogus=1), "bogus"),
        (lambda r: r["input"].update(uri_prefix="x"), "input.uri_prefix"),
        (lambda r: r.update(predict={"batch_sizee": 10}), "predict.batch_sizee"),
        (lambda r: r.update(storage={"endpoint": "http://h:1"}), "storage.endpoint"),
        (
            lambda r: r.update(
                preprocessing={"features": {"dense": [{"name": "p"}, {"name": "q", "scale": 2}]}}
            ),
            "preprocessing.features.dense.1.scale",
        ),
    ],
)
def test_unknown_key_rejected_with_key_path(tmp_path, mutate, key_path):
    raw = base()
    mutate(raw)
    path = write_yaml(tmp_path, raw)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert f"{key_path}: unknown key" in msg
    assert "1 error(s)" in msg


def test_several_errors_reported_together(tmp_path):
    raw = base()
    raw["bogus"] = True
    raw["predict"] = {"batch_sizee": 3, "min_replicas": 0}
    raw["output"]["compression"] = "lz4"
    raw["storage"] = {"endpoint_url": "http://key:secret@minio:9000"}
    del raw["model"]
    with pytest.raises(ConfigError) as ei:
        load_config(write_yaml(tmp_path, raw))
    lines = error_lines(ei.value)
    assert "6 error(s)" in str(ei.value).splitlines()[0]
    assert len(lines) == 6
    keys = sorted(line.split(":", 1)[0] for line in lines)
    assert keys == sorted(
        [
            "bogus",
            "predict.batch_sizee",
            "predict.min_replicas",
            "output.compression",
            "storage.endpoint_url",
            "model",
        ]
    )
    assert "model: required key is missing" in lines
    # the credentials themselves are not echoed back
    assert "secret" not in str(ei.value)


def test_missing_required_keys(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(write_yaml(tmp_path, "# empty\n"))
    lines = error_lines(ei.value)
    assert sorted(lines) == sorted(
        f"{k}: required key is missing" for k in ["name", "input", "model", "output"]
    )


def test_config_file_does_not_exist(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: config file does not exist")):
        load_config(path)


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write_yaml(tmp_path, "name: [unclosed\n"))


def test_top_level_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(write_yaml(tmp_path, "- a\n- b\n"))


def test_bad_name_and_date():
    raw = base()
    raw["name"] = "has space"
    raw["input"]["dates"] = ["2026-02-30", "2026-11-01"]
    raw["input"]["start_date"] = "11/01/2026"
    with pytest.raises(ConfigError) as ei:
        config_from_dict(raw)
    msg = str(ei.value)
    assert "3 error(s)" in msg
    assert "name: Value error, use letters, digits" in msg
    assert "input.dates: Value error, expected a date YYYY-MM-DD, got '2026-02-30'" in msg
    assert "input.start_date: Value error, expected a date YYYY-MM-DD, got '11/01/2026'" in msg


def test_max_replicas_below_min_replicas():
    raw = base()
    raw["predict"] = {"min_replicas": 3, "max_replicas": 2}
    with pytest.raises(ConfigError, match=r"max_replicas \(2\) must be >= min_replicas \(3\)"):
        config_from_dict(raw)
    raw["predict"]["max_replicas"] = 3
    assert config_from_dict(raw).predict.max_replicas == 3


def test_predict_config_direct_validation():
    with pytest.raises(ValueError, match="max_replicas"):
        PredictConfig(min_replicas=4, max_replicas=1)


@pytest.mark.parametrize(
    "url",
    ["http://AKIA:secret@127.0.0.1:9000", "https://user@s3.example.com", "http://a:b@h:1/path"],
)
def test_endpoint_url_with_credentials_rejected(url):
    raw = base()
    raw["storage"] = {"endpoint_url": url}
    with pytest.raises(ConfigError, match=r"storage\.endpoint_url: .*credentials must not be put"):
        config_from_dict(raw)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000", "https://s3.example.com/prefix@v2", None])
def test_endpoint_url_without_credentials_accepted(url):
    assert StorageConfig(endpoint_url=url).endpoint_url == url


def test_defaults():
    cfg = config_from_dict(base())
    assert cfg.predict.num_gpus_per_replica == "auto"
    assert cfg.predict.reserve_cpus == "auto" and cfg.predict.replicas_per_gpu == "auto"
    assert cfg.output.partition_columns == ["ds"]
    assert cfg.preprocessing.features is None


# ---------------------------------------------------------------------------------------------
# --set overrides
# ---------------------------------------------------------------------------------------------


def test_overrides_nested_numbers_lists_null(tmp_path):
    raw = base()
    raw["model"]["version"] = "v1"
    path = write_yaml(tmp_path, raw)
    cfg = load_config(
        path,
        [
            "predict.batch_size=128",
            "predict.num_cpus_per_replica=0.5",
            "predict.num_gpus_per_replica=0",
            "output.key_columns=[event_id, user_id]",
            "model.version=null",
            "model.kwargs.inner.depth=3",
            "ray.num_cpus=4",
            "name=renamed",
            "model.sha256=abc=def",
        ],
    )
    assert cfg.predict.batch_size == 128
    assert cfg.predict.num_cpus_per_replica == 0.5
    assert cfg.predict.num_gpus_per_replica == 0
    assert cfg.output.key_columns == ["event_id", "user_id"]
    assert cfg.model.version is None
    assert cfg.model.kwargs == {"inner": {"depth": 3}}
    assert cfg.ray.num_cpus == 4
    assert cfg.name == "renamed"
    assert cfg.model.sha256 == "abc=def"  # only the first '=' separates key and value


def test_overrides_later_wins_and_empty_value():
    raw = apply_overrides(base(), ["predict.batch_size=1", "predict.batch_size=2", "model.version="])
    assert raw["predict"]["batch_size"] == 2
    assert raw["model"]["version"] == ""


def test_override_creates_section_when_null():
    raw = base()
    raw["predict"] = None
    assert apply_overrides(raw, ["predict.max_replicas=3"])["predict"] == {"max_replicas": 3}


def test_override_unknown_key_is_rejected_by_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"predict\.batchsize: unknown key"):
        load_config(write_yaml(tmp_path, base()), ["predict.batchsize=4"])


def test_override_value_type_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"predict\.batch_size"):
        load_config(write_yaml(tmp_path, base()), ["predict.batch_size=[1, 2]"])


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("predict.batch_size", "expected key.path=value"),
        ("=3", "expected key.path=value"),
        ("output.key_columns.first=a", "'key_columns' is not a section"),
        ("name.first=a", "'name' is not a section"),
        ("predict.batch_size=[1", "cannot parse value"),
    ],
)
def test_malformed_override(item, fragment):
    with pytest.raises(ConfigError) as ei:
        apply_overrides(base(), [item])
    assert f"--set {item!r}" in str(ei.value)
    assert fragment in str(ei.value)


def test_unquoted_yaml_dates_accepted(tmp_path):
    path = write_yaml(
        tmp_path,
        "name: x\n"
        "input: {uri: /d, dates: [2026-11-01], start_date: 2026-11-01, end_date: 2026-11-03}\n"
        "model: {uri: /m}\n"
        "output: {uri: /o, key_columns: [id]}\n",
    )
    cfg = load_config(path, ["input.dates=[2026-11-02]"])
    assert cfg.input.dates == ["2026-11-02"]
    assert (cfg.input.start_date, cfg.input.end_date) == ("2026-11-01", "2026-11-03")


def test_numeric_looking_version_override_accepted(tmp_path):
    cfg = load_config(write_yaml(tmp_path, base()), ["model.version=2"])
    assert cfg.model.version == "2"


# ---------------------------------------------------------------------------------------------
# digest
# ---------------------------------------------------------------------------------------------


def test_digest_stable_across_key_order(tmp_path):
    raw = base()
    raw["predict"] = {"batch_size": 64, "max_replicas": 2}
    reordered = {k: raw[k] for k in reversed(list(raw))}
    reordered["predict"] = {"max_replicas": 2, "batch_size": 64}
    reordered["input"] = dict(reversed(list(raw["input"].items())))
    a = load_config(write_yaml(tmp_path, raw, "a.yaml"))
    b = load_config(write_yaml(tmp_path, reordered, "b.yaml"))
    assert (tmp_path / "a.yaml").read_text() != (tmp_path / "b.yaml").read_text()
    assert a.digest() == b.digest()
    assert re.fullmatch(r"[0-9a-f]{16}", a.digest())


def test_digest_same_for_explicit_defaults():
    raw = base()
    explicit = base()
    explicit["predict"] = {"batch_size": 8192}
    assert config_from_dict(raw).digest() == config_from_dict(explicit).digest()


def test_digest_changes_with_a_value():
    raw = base()
    other = base()
    other["predict"] = {"batch_size": 4096}
    assert config_from_dict(raw).digest() != config_from_dict(other).digest()


def test_dump_config_round_trips(tmp_path):
    cfg = config_from_dict(base())
    path = write_yaml(tmp_path, dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.digest() == cfg.digest()


def test_model_kwargs_are_redacted_unless_safe():
    from pipeline.config import REDACTED, config_from_dict, dump_config, shown_config

    cfg = config_from_dict(
        {
            "name": "j",
            "input": {"uri": "/in"},
            "model": {
                "uri": "/m.safetensors",
                "class_path": "pkg.mod:Model",
                "kwargs": {"api_token": "tok-3f9a-secret", "dim": 64},
                "safe_kwargs": ["dim"],
            },
            "output": {"uri": "/out", "key_columns": ["id"]},
        }
    )
    shown = shown_config(cfg)
    assert shown["model"]["kwargs"] == {"api_token": REDACTED, "dim": 64}
    assert "tok-3f9a-secret" not in dump_config(cfg)
    assert "tok-3f9a-secret" in dump_config(cfg, redact=False)  # only for the job itself
    assert cfg.model.kwargs["api_token"] == "tok-3f9a-secret"  # the model still gets it


def test_submit_never_uploads_credential_files():
    from pathlib import Path

    from ray._private.runtime_env.packaging import _get_excludes

    from jobs.submit import PROJECT_ROOT, runtime_env

    env = runtime_env("none", None)
    assert "env_vars" not in env or not any("CONFIG" in k for k in env["env_vars"])
    excluded = _get_excludes(PROJECT_ROOT, env["excludes"])  # Ray's own matcher for working_dir
    for secret in [".env", "sub/.env", ".env.prod", ".aws/credentials", "keys/server.pem", ".netrc"]:
        assert excluded(PROJECT_ROOT / secret), secret
    for kept in ["pipeline/run/score.py", "configs/demo.yaml", "README.md"]:
        assert not excluded(Path(PROJECT_ROOT / kept)), kept


@pytest.mark.parametrize(
    ("mutate", "hint"),
    [
        (
            lambda r: r.update(predict={"batch_sise": 10}),
            "predict.batch_sise: unknown key; did you mean 'batch_size'?",
        ),
        (
            lambda r: r["output"].update(key_column=["x"]),
            "output.key_column: unknown key; did you mean 'key_columns'?",
        ),
        (lambda r: r.update(modle={}), "modle: unknown key; did you mean 'model'?"),
        (
            lambda r: r.update(preprocessing={"features": {"dense": [{"name": "p", "lgo1p": True}]}}),
            "preprocessing.features.dense.0.lgo1p: unknown key; did you mean 'log1p'?",
        ),
    ],
)
def test_typo_gets_did_you_mean(tmp_path, mutate, hint):
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError) as ei:
        load_config(write_yaml(tmp_path, raw))
    assert hint in str(ei.value)


def test_unknown_key_far_from_any_gets_no_guess(tmp_path):
    raw = base()
    raw["zzzzqqq"] = 1
    with pytest.raises(ConfigError) as ei:
        load_config(write_yaml(tmp_path, raw))
    assert "zzzzqqq: unknown key" in str(ei.value) and "did you mean" not in str(ei.value)


def test_every_config_key_has_a_meaning():
    """docs/config.md is generated from the descriptions: a key without one has an empty meaning."""
    from pydantic import BaseModel

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        bare = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            subs = [
                a
                for a in (ann, *getattr(ann, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if subs:
                bare += walk(subs[0], f"{prefix}{name}.")
            elif not field.description:
                bare.append(f"{prefix}{name}")
        return bare

    assert walk(JobConfig, "") == []


def test_code_beside_the_config_is_importable_and_shipped_by_submit(tmp_path, monkeypatch):
    """class_path and preprocessing.function modules beside the config import without PYTHONPATH,
    and `submit` ships them as py_modules (a module and a package); the project's own modules
    travel with the working_dir and are not listed."""
    from jobs.submit import as_packages, runtime_env, user_code
    from models.checkpoint import import_object

    (tmp_path / "besidemodel.py").write_text("class Ranker:\n    pass\n")
    (tmp_path / "besidefeatures").mkdir()
    (tmp_path / "besidefeatures" / "__init__.py").write_text("def build(batch):\n    return {}\n")
    raw = base()
    raw["model"].update(class_path="besidemodel:Ranker")
    raw["preprocessing"] = {"function": "besidefeatures:build"}
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    cfg = load_config(write_yaml(tmp_path, raw))
    assert import_object("besidemodel:Ranker").__name__ == "Ranker"
    assert str(tmp_path) in os.environ["PYTHONPATH"]  # for Ray's worker processes
    shipped = runtime_env("none", None, user_code(cfg))["py_modules"]
    assert shipped == [str(tmp_path / "besidefeatures"), str(tmp_path / "besidemodel.py")]
    # Ray's job SDK uploads directories only: a module file goes as a package of its name
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    packaged = as_packages(shipped, str(scratch))
    assert packaged == [str(tmp_path / "besidefeatures"), str(scratch / "besidemodel")]
    assert (scratch / "besidemodel" / "__init__.py").read_text() == (tmp_path / "besidemodel.py").read_text()
    cfg.model.class_path = "models.dlrm:DLRM"
    assert user_code(cfg) == [str(tmp_path / "besidefeatures")]


def test_submit_treats_an_edit_of_the_model_code_as_new_work(tmp_path, monkeypatch):
    """The submission id follows the scoring identity: the code of a class_path model is in it."""
    from jobs.submit import submission_id

    (tmp_path / "editedmodel.py").write_text("class Ranker:\n    scale = 1\n")
    raw = base()
    raw["model"].update(class_path="editedmodel:Ranker")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # restored afterwards
    cfg = load_config(write_yaml(tmp_path, raw))
    model = {"version": "v1", "sha256": "ab"}
    before = submission_id(cfg, ["2026-11-01"], model)
    assert submission_id(cfg, ["2026-11-01"], model) == before
    (tmp_path / "editedmodel.py").write_text("class Ranker:\n    scale = 2\n")
    assert submission_id(cfg, ["2026-11-01"], model) != before
