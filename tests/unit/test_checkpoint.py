"""Unit tests for models.checkpoint: save/load round trips, sha256 checks, pickle refusal, errors."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from models.checkpoint import (
    FORMATS,
    METADATA_FILE,
    ModelError,
    import_object,
    infer_format,
    inspect_checkpoint,
    load_model,
    read_metadata,
    save_checkpoint,
    sha256_file,
)
from models.dlrm import build_dlrm
from models.features import CategoricalFeature, DenseFeature, FeatureSpec

# torch 2.13 deprecates torch.jit; the TorchScript format is still supported here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

BUCKETS = [7, 5, 3]
NUM_DENSE = 2
SMALL = {"embedding_dim": 4, "bottom_mlp": [8], "top_mlp": [8]}
ARCH = {
    "builtin": "dlrm",
    "preset": "dlrm-demo",
    "kwargs": {"buckets": BUCKETS, "num_dense": NUM_DENSE, **SMALL},
}
SPEC = FeatureSpec(
    [CategoricalFeature("a", 7), CategoricalFeature("b", 5), CategoricalFeature("c", 3)],
    [DenseFeature("x", mean=0.5, std=2.0), DenseFeature("y", log1p=True)],
)


def make_inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, b, (n,), generator=g) for b in BUCKETS], dim=1)
    dense = torch.randn(n, NUM_DENSE, generator=g)
    return cat, dense


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(123)
    return build_dlrm(BUCKETS, NUM_DENSE, **SMALL).eval()


def save(directory, model, fmt: str, **kw):
    return save_checkpoint(
        str(directory),
        model,
        format=fmt,
        version=kw.pop("version", "v1"),
        feature_spec=kw.pop("feature_spec", SPEC),
        architecture=ARCH,
        example_inputs=make_inputs(8, seed=99),
        **kw,
    )


# Export is the slowest format to save (~2 s): save each format once per module.
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(123)
    m = build_dlrm(BUCKETS, NUM_DENSE, **SMALL).eval()
    dirs = {}
    for fmt in FORMATS:
        d = tmp_path_factory.mktemp(f"ckpt-{fmt}")
        save(d, m, fmt)
        dirs[fmt] = str(d)
    return m, dirs


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, 5, 64])
def test_round_trip_outputs_equal(saved, fmt, n):
    original, dirs = saved
    loaded = load_model(dirs[fmt])
    assert loaded.meta.format == fmt
    cat, dense = make_inputs(n, seed=n)
    with torch.no_grad():
        want = original(cat, dense)
        got = loaded.module(cat, dense)
    assert got.shape == (n,)
    assert torch.max(torch.abs(got - want)).item() < 1e-6


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_metadata(saved, fmt):
    _, dirs = saved
    d = dirs[fmt]
    assert sorted(os.listdir(d)) == sorted(
        [
            METADATA_FILE,
            {"safetensors": "model.safetensors", "torchscript": "model.ts", "export": "model.pt2"}[fmt],
        ]
    )
    meta = read_metadata(d)
    assert meta.format == fmt
    assert meta.version == "v1"
    assert meta.inputs == ["cat", "dense"]
    assert meta.sha256 == sha256_file(os.path.join(d, meta.weights))
    assert meta.spec() == SPEC
    assert (meta.architecture is not None) == (fmt == "safetensors")


def test_loaded_model_differs_from_a_fresh_model(saved):
    """Guard against a vacuous round trip: a differently initialized model gives other outputs."""
    original, dirs = saved
    torch.manual_seed(7)
    other = build_dlrm(BUCKETS, NUM_DENSE, **SMALL).eval()
    cat, dense = make_inputs(16)
    with torch.no_grad():
        assert torch.max(torch.abs(other(cat, dense) - original(cat, dense))).item() > 1e-4


def test_save_unknown_format(tmp_path, model):
    with pytest.raises(ModelError, match="format must be one of"):
        save(tmp_path, model, "onnx")


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_save_needs_example_inputs(tmp_path, model, fmt):
    with pytest.raises(ModelError, match="example_inputs"):
        save_checkpoint(str(tmp_path), model, format=fmt, version="v", feature_spec=None)


def test_save_safetensors_needs_architecture(tmp_path, model):
    with pytest.raises(ModelError, match="architecture"):
        save_checkpoint(str(tmp_path), model, format="safetensors", version="v", feature_spec=None)


# ---------------------------------------------------------------------------------------------
# sha256
# ---------------------------------------------------------------------------------------------


def _flip_byte(path: str, offset: int | None = None) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        i = len(data) - 1 if offset is None else offset
        data[i] ^= 0x01
        f.seek(0)
        f.write(data)


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_sha256_mismatch_refused(tmp_path, model, fmt):
    meta = save(tmp_path, model, fmt)
    load_model(str(tmp_path))  # loads before the change
    _flip_byte(str(tmp_path / meta.weights))
    with pytest.raises(ModelError, match="sha256") as ei:
        load_model(str(tmp_path))
    assert "recorded in the checkpoint" in str(ei.value)
    assert meta.weights in str(ei.value)


def test_expected_sha256_override(tmp_path, model):
    meta = save(tmp_path, model, "safetensors")
    # the right digest (in any case) loads
    assert load_model(str(tmp_path), expected_sha256=meta.sha256.upper()).meta.sha256 == meta.sha256
    with pytest.raises(
        ModelError, match=r"sha256 mismatch: expected \(config, or the driver.s check of this run\)"
    ):
        load_model(str(tmp_path), expected_sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        inspect_checkpoint(str(tmp_path), expected_sha256="ab" * 32)


def test_expected_sha256_for_bare_file(tmp_path, model):
    meta = save(tmp_path, model, "safetensors")
    wpath = str(tmp_path / meta.weights)
    loaded = load_model(wpath, architecture=ARCH, expected_sha256=meta.sha256)
    assert loaded.meta.sha256 == meta.sha256
    with pytest.raises(ModelError, match="sha256"):
        load_model(wpath, architecture=ARCH, expected_sha256="f" * 64)


# ---------------------------------------------------------------------------------------------
# pickles are refused
# ---------------------------------------------------------------------------------------------


def test_torch_save_pickle_named_pt_refused(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match="pickle") as ei:
        load_model(str(path))
    assert str(path) in str(ei.value)


def test_torch_save_whole_module_named_pt_refused(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with pytest.raises(ModelError, match="pickle"):
        load_model(str(path))


def test_pickle_inside_checkpoint_dir_refused(tmp_path, model):
    """A checkpoint dir whose model.ts is a torch.save pickle (with a matching sha256) is refused."""
    meta = save(tmp_path, model, "torchscript")
    wpath = tmp_path / meta.weights
    torch.save(model.state_dict(), wpath)
    raw = json.loads((tmp_path / METADATA_FILE).read_text())
    raw["sha256"] = sha256_file(str(wpath))
    (tmp_path / METADATA_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="pickle"):
        load_model(str(tmp_path))


def test_not_a_zip_named_pt_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"definitely not a zip archive")
    with pytest.raises(ModelError, match="not a TorchScript archive"):
        load_model(str(path))


@pytest.mark.parametrize("name", ["model.pth", "model.pkl", "MODEL.PKL", "w.pickle", "w.bin", "w.ckpt"])
def test_infer_format_refuses_pickle_suffixes(tmp_path, name):
    with pytest.raises(ModelError, match="pickled checkpoints are refused"):
        infer_format(name)
    # and load_model refuses the file before opening it
    path = tmp_path / name
    path.write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    with pytest.raises(ModelError, match="pickled checkpoints are refused"):
        load_model(str(path))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("m.safetensors", "safetensors"), ("m.pt2", "export"), ("m.pt", "torchscript"), ("m.TS", "torchscript")],
)
def test_infer_format_known_suffixes(name, fmt):
    assert infer_format(name) == fmt


def test_infer_format_unknown_suffix():
    with pytest.raises(ModelError, match="cannot tell the model format"):
        infer_format("model.onnx")


# torch.jit.load uses torch's C++ unpickler, which this check cannot see: no TorchScript case.
@pytest.mark.parametrize("fmt", ["safetensors", "export"])
def test_loading_never_unpickles(saved, fmt, monkeypatch):
    model, dirs = saved

    def boom(*args, **kwargs):
        raise AssertionError("pickle was used while loading a checkpoint")

    class BoomUnpickler:
        def __init__(self, *args, **kwargs):
            boom()

    monkeypatch.setattr(pickle, "Unpickler", BoomUnpickler)
    monkeypatch.setattr(pickle, "_Unpickler", BoomUnpickler)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    # the patch is effective
    with pytest.raises(AssertionError, match="pickle was used"):
        pickle.loads(pickle.dumps(1))
    with pytest.raises(AssertionError, match="pickle was used"):
        pickle.Unpickler(None)

    loaded = load_model(dirs[fmt])
    cat, dense = make_inputs(4)
    with torch.no_grad():
        assert torch.max(torch.abs(loaded.module(cat, dense) - model(cat, dense))).item() < 1e-6


# ---------------------------------------------------------------------------------------------
# safetensors weights that do not fit the architecture
# ---------------------------------------------------------------------------------------------


def _bare_safetensors(tmp_path, state) -> str:
    from safetensors.torch import save_file

    path = str(tmp_path / "weights.safetensors")
    save_file(state, path)
    return path


def test_safetensors_missing_key(tmp_path, model):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    dropped = "top.0.bias"
    assert dropped in state
    del state[dropped]
    path = _bare_safetensors(tmp_path, state)
    with pytest.raises(ModelError, match=r"missing keys \['top\.0\.bias'\]"):
        load_model(path, architecture=ARCH)


def test_safetensors_unexpected_key(tmp_path, model):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["extra.weight"] = torch.zeros(2)
    path = _bare_safetensors(tmp_path, state)
    with pytest.raises(ModelError, match=r"unexpected keys \['extra\.weight'\]"):
        load_model(path, architecture=ARCH)


def test_safetensors_wrong_dtype(tmp_path, model):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["embedding.weight"] = state["embedding.weight"].double()
    path = _bare_safetensors(tmp_path, state)
    with pytest.raises(ModelError, match=r"embedding\.weight: .*float64.*expected.*float32"):
        load_model(path, architecture=ARCH)


def test_safetensors_wrong_shape(tmp_path, model):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["bottom.0.weight"] = torch.zeros(3, 3)
    path = _bare_safetensors(tmp_path, state)
    with pytest.raises(ModelError, match=r"bottom\.0\.weight: \(3, 3\)"):
        load_model(path, architecture=ARCH)


def test_safetensors_corrupt_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ModelError, match="cannot read safetensors"):
        load_model(str(path), architecture=ARCH)


def test_bare_safetensors_needs_architecture(tmp_path, model):
    path = _bare_safetensors(tmp_path, {k: v.contiguous() for k, v in model.state_dict().items()})
    with pytest.raises(ModelError, match="architecture"):
        load_model(path)


def test_bare_safetensors_with_architecture_loads(tmp_path, model):
    path = _bare_safetensors(tmp_path, {k: v.contiguous() for k, v in model.state_dict().items()})
    loaded = load_model(path, architecture=ARCH, version="bare-1")
    assert loaded.meta.version == "bare-1"
    cat, dense = make_inputs(6)
    with torch.no_grad():
        assert torch.max(torch.abs(loaded.module(cat, dense) - model(cat, dense))).item() < 1e-6


def test_a_built_in_model_loads_its_weights_exactly_without_a_random_init_first(tmp_path, model):
    """The load builds a built-in architecture with torch.nn.init's initializers as no-ops (the
    weights loaded over it make that init wasted work) and puts them back after, also when the
    build fails."""
    from models.checkpoint import build_architecture

    originals = {n: f for n, f in vars(torch.nn.init).items() if n.endswith("_") and callable(f)}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    loaded = load_model(_bare_safetensors(tmp_path, state), architecture=ARCH)
    assert {k: v for k, v in vars(torch.nn.init).items() if k in originals} == originals
    got = loaded.module.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="unknown preset"):
        build_architecture({**ARCH, "preset": "nope"}, for_loading=True)
    assert {k: v for k, v in vars(torch.nn.init).items() if k in originals} == originals
    rng = torch.random.get_rng_state()
    build_architecture(ARCH, for_loading=True)
    assert torch.equal(torch.random.get_rng_state(), rng)  # no random number drawn: no init
    fresh = build_architecture(ARCH)  # a build for training is initialized as before
    assert not torch.equal(torch.random.get_rng_state(), rng)
    assert fresh.embedding.weight.std().item() > 0.5  # nn.Embedding's N(0, 1)
    _other_threads_initialize_while_a_load_builds()


def _other_threads_initialize_while_a_load_builds() -> None:
    import threading

    from models.checkpoint import _uninitialized

    inside, done = threading.Event(), threading.Event()

    def loading() -> None:
        with _uninitialized():
            inside.set()
            done.wait(10)

    t = threading.Thread(target=loading)
    t.start()
    assert inside.wait(10)
    try:
        assert torch.nn.init.normal_(torch.zeros(1000)).std().item() > 0.5  # this thread: real init
    finally:
        done.set()
        t.join()


def test_architecture_by_class_path(tmp_path, model):
    path = _bare_safetensors(tmp_path, {k: v.contiguous() for k, v in model.state_dict().items()})
    arch = {"class": "models.dlrm:DLRM", "kwargs": {"buckets": BUCKETS, "num_dense": NUM_DENSE, **SMALL}}
    loaded = load_model(path, architecture=arch)
    cat, dense = make_inputs(6)
    with torch.no_grad():
        assert torch.max(torch.abs(loaded.module(cat, dense) - model(cat, dense))).item() < 1e-6


def test_unknown_builtin_architecture(tmp_path, model):
    path = _bare_safetensors(tmp_path, {k: v.contiguous() for k, v in model.state_dict().items()})
    with pytest.raises(ModelError, match="unknown built-in architecture 'resnet'"):
        load_model(path, architecture={"builtin": "resnet"})
    with pytest.raises(ModelError, match="needs 'builtin' or 'class'"):
        load_model(path, architecture={"kwargs": {}})


# ---------------------------------------------------------------------------------------------
# import_object
# ---------------------------------------------------------------------------------------------


def test_import_object_ok():
    from models.dlrm import DLRM, build_dlrm

    assert import_object("models.dlrm:DLRM") is DLRM
    assert import_object("models.dlrm.build_dlrm") is build_dlrm
    assert import_object("os.path:join") is os.path.join


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
        ("models.dlrm:NoSuchClass", "'models.dlrm' has no attribute 'NoSuchClass'"),
        ("models.dlrm.NoSuchClass", "'models.dlrm' has no attribute 'NoSuchClass'"),
        ("nodots", "expected 'package.module:Name'"),
        ("models.dlrm:", "expected 'package.module:Name'"),
    ],
)
def test_import_object_errors_name_the_path(path, fragment):
    with pytest.raises(ModelError) as ei:
        import_object(path)
    msg = str(ei.value)
    assert f"import path {path!r}" in msg
    assert fragment in msg


# ---------------------------------------------------------------------------------------------
# bare TorchScript / export files, metadata errors
# ---------------------------------------------------------------------------------------------


def test_bare_torchscript_file_with_arguments(tmp_path, model):
    path = tmp_path / "scripted.pt"
    with torch.no_grad():
        traced = torch.jit.trace(model, make_inputs(8))
    torch.jit.save(traced, str(path))
    assert not (tmp_path / METADATA_FILE).exists()
    loaded = load_model(str(path), inputs=["ids", "feats"], version="ts-42")
    assert loaded.meta.format == "torchscript"
    assert loaded.meta.inputs == ["ids", "feats"]
    assert loaded.meta.version == "ts-42"
    assert loaded.meta.sha256 == sha256_file(str(path))
    assert loaded.meta.feature_spec is None
    cat, dense = make_inputs(3, seed=5)
    with torch.no_grad():
        assert torch.max(torch.abs(loaded.module(cat, dense) - model(cat, dense))).item() < 1e-6


def test_bare_file_default_version_is_file_name(tmp_path, model):
    path = tmp_path / "ranker.ts"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, make_inputs(4)), str(path))
    meta, wpath = inspect_checkpoint(str(path))
    assert meta.version == "ranker.ts"
    assert meta.inputs == ["cat", "dense"]
    assert wpath == str(path)


def test_bare_export_file_batch_size_one(saved, tmp_path):
    original, dirs = saved
    src = os.path.join(dirs["export"], "model.pt2")
    loaded = load_model(src, version="exp")
    cat, dense = make_inputs(1, seed=3)
    with torch.no_grad():
        out = loaded.module(cat, dense)
    assert out.shape == (1,)
    assert torch.max(torch.abs(out - original(cat, dense))).item() < 1e-6


def test_overrides_apply_to_checkpoint_dir(saved):
    _, dirs = saved
    spec = FeatureSpec([CategoricalFeature("z", 4)], [])
    meta, _ = inspect_checkpoint(dirs["safetensors"], version="v2", inputs=["p", "q"], feature_spec=spec)
    assert meta.version == "v2"
    assert meta.inputs == ["p", "q"]
    assert meta.spec() == spec


def test_format_conflict_with_checkpoint(saved):
    _, dirs = saved
    with pytest.raises(ModelError, match="config says format 'torchscript', checkpoint says 'safetensors'"):
        inspect_checkpoint(dirs["safetensors"], format="torchscript")


def test_missing_path_and_missing_metadata(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=f"no {METADATA_FILE}"):
        load_model(str(empty))


def test_missing_weights_file(tmp_path, model):
    meta = save(tmp_path, model, "safetensors")
    os.remove(tmp_path / meta.weights)
    with pytest.raises(ModelError, match="'model.safetensors' named in batchscore.json is missing"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "invalid JSON"),
        (
            json.dumps({"format": "onnx", "weights": "m", "sha256": "", "version": "v"}),
            "format must be one of",
        ),
        (json.dumps({"format": "export", "weights": "m", "sha256": ""}), "version"),
    ],
)
def test_bad_metadata(tmp_path, content, fragment):
    (tmp_path / METADATA_FILE).write_text(content)
    with pytest.raises(ModelError, match=fragment):
        read_metadata(str(tmp_path))


def test_metadata_from_a_newer_version_loads_without_its_unknown_keys(tmp_path, caplog):
    raw = {"format": "export", "weights": "m", "sha256": "", "version": "v", "future_key": 1}
    (tmp_path / METADATA_FILE).write_text(json.dumps(raw))
    meta = read_metadata(str(tmp_path))
    assert meta.version == "v" and not hasattr(meta, "future_key")
    assert "ignoring unknown metadata keys ['future_key']" in caplog.text


def test_corrupt_export_archive(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"not an export archive")
    with pytest.raises(ModelError, match="cannot load torch.export program"):
        load_model(str(path))


def _class_checkpoint(tmp_path, cls_path: str, kwargs: dict):
    """A bare safetensors checkpoint of a class by path (tests/testmodels.py), built as for
    training; returns (path, architecture, the trained-as model)."""
    from models.checkpoint import build_architecture

    arch = {"class": cls_path, "kwargs": kwargs}
    model = build_architecture(arch).eval()
    with torch.no_grad():
        for p in model.parameters():  # weights no init would give
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) / 7)
    path = _bare_safetensors(tmp_path, {k: v.contiguous() for k, v in model.state_dict().items()})
    return path, arch, model


def test_a_model_by_class_path_loads_without_its_random_init_when_the_load_replaces_all_of_it(tmp_path):
    """The usual user's model (layers initialized by torch.nn.init, a non-persistent buffer
    computed from its arguments): no random number is drawn by the load, and the loaded model
    computes what the saved one does."""
    path, arch, model = _class_checkpoint(tmp_path, "testmodels:PairsBuffer", {"n": 4})
    rng = torch.random.get_rng_state()
    loaded = load_model(path, architecture=arch, inputs=["cat"])
    assert torch.equal(torch.random.get_rng_state(), rng)
    cat = torch.randint(0, 50, (6, 3))
    with torch.no_grad():
        assert torch.equal(loaded.module(cat), model(cat))


@pytest.mark.parametrize("where", ["buffer", "derived", "attribute", "shared", "sparse"])
def test_a_model_by_class_path_that_initializes_state_the_load_keeps_is_built_with_its_init(
    tmp_path, where, caplog
):
    """A tensor initialized in __init__ that the load does not replace (a non-persistent random
    projection, a buffer computed from an initialized temporary, a plain attribute, memory shared
    with a parameter) would be left without data by a skipped init: the class is built again
    with it, and the loaded model computes what the saved one does."""
    why = "initializes tensors a load does not replace"
    _loads_built_with_its_init(tmp_path, caplog, "testmodels:InitializedState", {"where": where}, why)


def _loads_built_with_its_init(tmp_path, caplog, cls_path: str, kwargs: dict, why: str) -> None:
    """The class's checkpoint loads built again with its init (the log says so, and `why`), and
    computes exactly what the saved model does."""
    path, arch, model = _class_checkpoint(tmp_path, cls_path, kwargs)
    with caplog.at_level("INFO", logger="batchscore"):
        loaded = load_model(path, architecture=arch, inputs=["dense"])
    assert f"{why}: built again with its random init" in caplog.text
    dense = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(loaded.module(dense), model(dense))


def test_a_number_a_class_computes_from_its_skipped_init_is_nan_not_plausible(tmp_path):
    """What no check sees (a float __init__ computes from an initialized parameter) comes out NaN
    in every score, where leftover memory would give numbers that look like scores."""
    path, arch, _ = _class_checkpoint(tmp_path, "testmodels:ScaleFromInit", {"n": 4})
    loaded = load_model(path, architecture=arch, inputs=["dense"])
    with torch.no_grad():
        assert torch.isnan(loaded.module(torch.randn(5, 4))).all()


def test_a_class_that_fails_to_build_without_its_init_is_built_with_it(tmp_path, caplog):
    why = "does not build without its random init (ValueError: weights not finite)"
    _loads_built_with_its_init(tmp_path, caplog, "testmodels:ChecksItsInit", {"n": 4}, why)


def test_a_class_that_fails_to_build_at_all_raises_its_own_error(tmp_path):
    path = _bare_safetensors(tmp_path, {"lin.weight": torch.zeros(1, 4), "lin.bias": torch.zeros(1)})
    with pytest.raises(ValueError, match="a broken model"):
        load_model(path, architecture={"class": "testmodels:ChecksItsInit", "kwargs": {"broken": True}})
