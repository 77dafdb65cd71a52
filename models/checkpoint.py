"""Checkpoint format and loaders. Nothing here unpickles arbitrary Python objects.

A batchscore checkpoint is a directory:

    CKPT/batchscore.json     metadata: format, weights file, sha256 of the weights, architecture,
                             feature spec (with normalization statistics), model inputs, version
    CKPT/<weights>           model.safetensors | model.ts (TorchScript) | model.pt2 (torch.export)

A bare TorchScript (.pt/.ts), torch.export (.pt2) or safetensors file also loads, with the missing
metadata given by the caller (the job config). A weights file whose sha256 differs from the one
recorded (or given) is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime, timezone
from typing import Any

from models.features import FeatureSpec
from models.imports import ModelError, import_object  # callers import both from here too

METADATA_FILE = "batchscore.json"
FORMATS = ("safetensors", "torchscript", "export")
_WEIGHTS_NAME = {
    "safetensors": "model.safetensors",
    "torchscript": "model.ts",
    "export": "model.pt2",
}
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pth", ".bin", ".ckpt")
_NOT_SAVED = ("registry", "weight_bytes")
log = logging.getLogger("batchscore")


@dataclass
class CheckpointMeta:
    format: str
    weights: str
    sha256: str
    version: str
    inputs: list[str] = field(default_factory=lambda: ["cat", "dense"])
    architecture: dict[str, Any] | None = None
    feature_spec: dict[str, Any] | None = None
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    score_reference: dict[str, Any] | None = None  # held-out score profile (models.scoreprofile)
    # several heads: head name -> held-out profile (score_reference is then the first head's)
    score_references: dict[str, Any] | None = None
    batchscore_checkpoint: int = 1
    # where this run took the checkpoint from, when from a model registry (a
    # models.registry.RegistryVersion): set when loaded, never written to batchscore.json
    registry: Any = None
    # bytes of the parameters and buffers (models.checkpoint.weight_bytes): known from the file
    # before any load, for the pool plan's placement of models (never written to batchscore.json)
    weight_bytes: int | None = None

    def saved(self) -> dict[str, Any]:
        """The metadata as batchscore.json holds it."""
        return {k: v for k, v in asdict(self).items() if k not in _NOT_SAVED}

    def spec(self) -> FeatureSpec | None:
        return FeatureSpec.from_dict(self.feature_spec) if self.feature_spec else None


@dataclass
class LoadedModel:
    module: Callable[..., Any]
    meta: CheckpointMeta
    path: str


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_call(fn: Any, kwargs: dict[str, Any], what: str, args: tuple[Any, ...] = ()) -> None:
    """Refuse a call whose arguments do not fit `fn`'s signature (a ModelError, exit 2) before
    it is made, instead of a TypeError deep inside a stage: `what` says whose arguments."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to check against
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ModelError(f"{what}{sig}: {e}") from None


def check_forward_inputs(module: Any, inputs: list[str], class_path: str) -> None:
    """model.inputs must fit forward: the predictor calls `module(*inputs)` positionally."""
    _check_call(module.forward, {}, f"model.inputs {inputs} do not fit {class_path}.forward", tuple(inputs))


@contextlib.contextmanager
def _uninitialized(touched: list[Any] | None = None) -> Iterator[None]:
    """torch.nn.init's in-place initializers as no-ops, on this thread, while a model is built for
    its weights to be loaded over it: its layers' random initialization is thrown away by the
    load, and was most of its time (`benchmarks/model_load.py`: a 192 M-parameter dlrm-base's
    `load_model` 1.47-1.48 s with it, 0.64-0.73 s without). `touched`: every tensor whose init
    was skipped is appended to it (and so kept alive: no later tensor takes its memory), for
    `_init_only_loaded` to check. The same as transformers' `no_init_weights`; torch has no
    switch of its own for modules that do not take a device (`torch.nn.utils.skip_init`), and
    building on the meta device leaves buffers such as a DLRM's interaction indices without data.
    The initializers are replaced while any thread is in such a block, and other threads' calls
    go to the originals (a challenger's model built beside it)."""
    with _INIT_LOCK:
        if not _INIT_SAVED:
            import torch

            init = torch.nn.init
            for name, f in list(vars(init).items()):
                if name.endswith("_") and not name.startswith("_") and callable(f):
                    _INIT_SAVED[name] = f
                    setattr(init, name, _skipped_on_this_thread(f))
        _INIT_USERS[0] += 1
    outer = getattr(_INIT_SKIP, "on", False), getattr(_INIT_SKIP, "touched", None)
    _INIT_SKIP.on, _INIT_SKIP.touched = True, touched if touched is not None else outer[1]
    try:
        yield
    finally:
        _INIT_SKIP.on, _INIT_SKIP.touched = outer
        with _INIT_LOCK:
            _INIT_USERS[0] -= 1
            if not _INIT_USERS[0]:
                import torch

                for name, f in _INIT_SAVED.items():
                    setattr(torch.nn.init, name, f)
                _INIT_SAVED.clear()


_INIT_LOCK = threading.Lock()
_INIT_SAVED: dict[str, Callable[..., Any]] = {}
_INIT_USERS = [0]
_INIT_SKIP = threading.local()


def _skipped_on_this_thread(original: Callable[..., Any]) -> Callable[..., Any]:
    def init(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_INIT_SKIP, "on", False):
            if _INIT_SKIP.touched is not None:  # a user's class: see `_build_class_for_loading`
                _INIT_SKIP.touched.append(tensor)
                _poison(tensor)
            return tensor
        return original(tensor, *args, **kwargs)

    return init


def _poison(tensor: Any) -> None:
    """NaN in a floating tensor whose init was skipped (24 ms for 160 M values): a value a user's
    __init__ computes from it and keeps outside a tensor (`.item()`, `.tolist()`), which no check
    here can see, is then NaN in the scores, not plausible numbers from leftover memory."""
    import torch

    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        with torch.no_grad():
            tensor.fill_(float("nan"))


def _storages(tensors: Iterator[Any]) -> set[int]:
    """The addresses of the memory the tensors live in (views share their base's); none for
    tensors without elements."""
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


def _unloaded_tensors(model: Any) -> Iterator[Any]:
    """The model's tensors that a strict `load_state_dict` leaves as built: its non-persistent
    buffers, and tensors kept as plain attributes of its modules (also in lists and dicts)."""
    import torch

    loaded = model.state_dict(keep_vars=True)
    known = {id(t) for t in loaded.values()}
    for _, buf in model.named_buffers():
        if id(buf) not in known:
            yield buf
    for module in model.modules():
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            if isinstance(value, dict):
                value = list(value.values())
            items = value if isinstance(value, (list, tuple)) else [value]
            yield from (v for v in items if isinstance(v, torch.Tensor) and id(v) not in known)


def _init_only_loaded(model: Any, touched: list[Any]) -> bool:
    """Whether every initializer skipped while `model` was built wrote only into memory that
    the load replaces: its parameters and persistent buffers, and nothing the load leaves as
    built (see `_unloaded_tensors`). A tensor initialized for anything else (a non-persistent
    random projection, a temporary a buffer was computed from) would be left without data."""
    hit = _storages(iter(touched))
    loaded = _storages(iter(model.state_dict(keep_vars=True).values()))
    return hit <= loaded and not hit & _storages(_unloaded_tensors(model))


def _build_class_for_loading(cls: Any, kwargs: dict[str, Any], path: str) -> Any:
    """A model by class path, built for its weights to be loaded over it: without its random
    init (`_uninitialized`, NaN in its place: `_poison`) when that init wrote only into what the
    load replaces (`_init_only_loaded`), else built again with it (its __init__ then runs
    twice). A build that fails without its init (an __init__ that factorizes or checks its
    initialized weights) is built again with it too: the error that counts is the real build's."""
    why = "initializes tensors a load does not replace"
    try:
        model = _build_uninitialized(cls, kwargs)
    except Exception as e:  # noqa: BLE001 - the build with its init raises it again if it is real
        model, why = None, f"does not build without its random init ({type(e).__name__}: {e})"
    if model is not None:
        return model
    log.info("%s %s: built again with its random init", path, why)
    return cls(**kwargs)


def _build_uninitialized(cls: Any, kwargs: dict[str, Any]) -> Any | None:
    """The class built without its random init, or None where the init it skipped was not all
    on what the load replaces (or cannot be checked: a tensor without plain storage, sparse)."""
    touched: list[Any] = []
    with _uninitialized(touched):
        model = cls(**kwargs)
    try:
        return model if _init_only_loaded(model, touched) else None
    except RuntimeError:  # sparse: NotImplementedError
        return None


def build_architecture(arch: dict[str, Any], *, for_loading: bool = False) -> Any:
    """An untrained nn.Module from an architecture record (built-in preset or class by import path).
    `for_loading`: every parameter is about to be loaded (strictly), so the build skips its
    random initialization (`_uninitialized`): always for a built-in architecture (its buffers
    come from its arguments); for a class by import path, only where the init it skipped was
    all on what the load replaces (`_build_class_for_loading`)."""
    kwargs = dict(arch.get("kwargs", {}))
    if "builtin" in arch:
        if arch["builtin"] != "dlrm":
            raise ModelError(f"unknown built-in architecture {arch['builtin']!r}; known: ['dlrm']")
        from models.dlrm import build_dlrm

        with _uninitialized() if for_loading else contextlib.nullcontext():
            return build_dlrm(preset=arch.get("preset", "dlrm-demo"), **kwargs)
    if "class" in arch:
        cls = import_object(arch["class"])
        _check_call(cls, kwargs, f"model.kwargs {sorted(kwargs)} do not fit {arch['class']}")
        return _build_class_for_loading(cls, kwargs, arch["class"]) if for_loading else cls(**kwargs)
    raise ModelError(f"architecture record needs 'builtin' or 'class', got keys {sorted(arch)}")


def _save_safetensors(model: Any, wpath: str) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, wpath)
    # safetensors writes 0600 (a temp file renamed); a scoring service running as another user
    # must be able to read the checkpoint, as it reads the metadata file beside it
    os.chmod(wpath, 0o666 & ~_umask())


def save_checkpoint(
    directory: str,
    model: Any,
    *,
    format: str = "safetensors",
    version: str,
    feature_spec: FeatureSpec | None,
    architecture: dict[str, Any] | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    inputs: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    score_reference: dict[str, Any] | None = None,
    score_references: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """Write `model` as a checkpoint directory. TorchScript/export need `example_inputs`."""
    import torch

    if format not in FORMATS:
        raise ModelError(f"format must be one of {FORMATS}, got {format!r}")
    os.makedirs(directory, exist_ok=True)
    weights = _WEIGHTS_NAME[format]
    wpath = os.path.join(directory, weights)
    model = model.eval()
    if format == "safetensors":
        if architecture is None:
            raise ModelError("a safetensors checkpoint needs an architecture record to rebuild the model")
        _save_safetensors(model, wpath)
    elif format == "torchscript":
        if example_inputs is None:
            raise ModelError("TorchScript export needs example_inputs")
        with torch.no_grad():
            traced = torch.jit.trace(model, example_inputs)
        torch.jit.save(traced, wpath)
    else:
        if example_inputs is None:
            raise ModelError("torch.export needs example_inputs")
        batch = torch.export.Dim("batch", min=1)
        dyn = tuple({0: batch} for _ in example_inputs)
        ep = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dyn)
        torch.export.save(ep, wpath)
    meta = CheckpointMeta(
        format=format,
        weights=weights,
        sha256=sha256_file(wpath),
        version=version,
        inputs=list(inputs or ["cat", "dense"]),
        architecture=architecture if format == "safetensors" else None,
        feature_spec=feature_spec.to_dict() if feature_spec else None,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        metrics=dict(metrics or {}),
        score_reference=score_reference,
        score_references=score_references,
    )
    with open(os.path.join(directory, METADATA_FILE), "w") as f:
        json.dump(meta.saved(), f, indent=2, sort_keys=True)
    return meta


def read_metadata(directory: str) -> CheckpointMeta:
    mpath = os.path.join(directory, METADATA_FILE)
    try:
        with open(mpath) as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise ModelError(f"{directory}: not a batchscore checkpoint (no {METADATA_FILE})") from e
    except json.JSONDecodeError as e:
        raise ModelError(f"{mpath}: invalid JSON: {e}") from e
    known = {f.name for f in dataclass_fields(CheckpointMeta)} - set(_NOT_SAVED)
    unknown = sorted(set(raw) - known)
    if unknown:  # written by a newer batchscore: what this version does not know, it cannot use
        log.warning("%s: ignoring unknown metadata keys %s", mpath, unknown)
    try:
        meta = CheckpointMeta(**{k: v for k, v in raw.items() if k in known})
    except TypeError as e:
        raise ModelError(f"{mpath}: {e}") from e
    if meta.format not in FORMATS:
        raise ModelError(f"{mpath}: format must be one of {FORMATS}, got {meta.format!r}")
    return meta


def infer_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".pt2"):
        return "export"
    if lower.endswith((".pt", ".ts", ".torchscript")):
        return "torchscript"
    if lower.endswith(_PICKLE_SUFFIXES):
        raise ModelError(
            f"{path}: pickled checkpoints are refused (loading them can run arbitrary code); "
            "save the weights with safetensors, or the model with TorchScript or torch.export"
        )
    raise ModelError(
        f"{path}: cannot tell the model format from the name; expected a checkpoint directory "
        "or a .safetensors, .pt/.ts (TorchScript) or .pt2 (torch.export) file"
    )


def _refuse_plain_pickle(path: str) -> None:
    """torch.save archives hold a pickle and no code/: refuse them even when named .pt."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile as e:
        raise ModelError(f"{path}: not a TorchScript archive (not a zip file)") from e
    if not any("/code/" in n for n in names):
        raise ModelError(
            f"{path}: this is a torch.save pickle, not a TorchScript archive; pickles are refused "
            "(they can run arbitrary code). Export with torch.jit.script/trace + torch.jit.save."
        )


def _load_safetensors(wpath: str, arch: dict[str, Any] | None) -> Any:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not arch:
        raise ModelError(f"{wpath}: safetensors weights need an architecture (built-in preset or class path)")
    model = build_architecture(arch, for_loading=True)
    try:
        state = load_file(wpath)
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{wpath}: cannot read safetensors file: {e}") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{wpath}: weights do not match architecture {arch}: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} {state[k].dtype} (expected {tuple(v.shape)} {v.dtype})"
        for k, v in expected.items()
        if state[k].shape != v.shape or state[k].dtype != v.dtype
    ]
    if bad:
        raise ModelError(f"{wpath}: tensors differ from the architecture: {bad[:10]}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return model.eval()


def inspect_checkpoint(
    path: str,
    *,
    format: str | None = None,
    architecture: dict[str, Any] | None = None,
    expected_sha256: str | None = None,
    version: str | None = None,
    inputs: list[str] | None = None,
    feature_spec: FeatureSpec | None = None,
) -> tuple[CheckpointMeta, str]:
    """Metadata (with the config's additions) and the weights path, sha256 verified. No torch."""
    if not os.path.exists(path):
        raise ModelError(f"{path}: model path does not exist")
    if os.path.isdir(path):
        meta = read_metadata(path)
        wpath = os.path.join(path, meta.weights)
        if not os.path.exists(wpath):
            raise ModelError(f"{path}: weights file {meta.weights!r} named in {METADATA_FILE} is missing")
        if format and format != meta.format:
            raise ModelError(f"{path}: config says format {format!r}, checkpoint says {meta.format!r}")
    else:
        fmt = format or infer_format(path)
        wpath = path
        meta = CheckpointMeta(
            format=fmt,
            weights=os.path.basename(path),
            sha256="",
            version=version or os.path.basename(path),
            architecture=architecture,
        )
    if inputs:
        meta.inputs = list(inputs)
    if version:
        meta.version = version
    if feature_spec is not None:
        meta.feature_spec = feature_spec.to_dict()
    if architecture and meta.format == "safetensors":
        meta.architecture = architecture
    actual = sha256_file(wpath)
    for label, want in (
        ("recorded in the checkpoint", meta.sha256),
        ("expected (config, or the driver's check of this run)", expected_sha256),
    ):
        if want and want.lower() != actual:
            raise ModelError(
                f"{wpath}: sha256 mismatch: {label} {want}, file has {actual}; "
                "the weights were changed or corrupted, refusing to load"
            )
    meta.sha256 = actual
    meta.weight_bytes = weight_bytes(wpath, meta.format)
    return meta, wpath


def weight_bytes(wpath: str, format: str) -> int:
    """The memory a model's parameters and buffers take once loaded, read without loading it:
    safetensors, the tensors' bytes (the file less its 8-byte length and JSON header, which hold
    no tensor data); TorchScript and torch.export, the archive's size (its tensors stored
    uncompressed beside a little code: an upper bound close to the weights)."""
    size = os.path.getsize(wpath)
    if format != "safetensors":
        return size
    with open(wpath, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        return size
    return max(0, size - 8 - int.from_bytes(head, "little"))


def load_model(path: str, *, map_location: str = "cpu", **overrides: Any) -> LoadedModel:
    """Load a checkpoint directory or a bare model file (see `inspect_checkpoint` for overrides)."""
    import torch

    meta, wpath = inspect_checkpoint(path, **overrides)
    if meta.format == "safetensors":
        module = _load_safetensors(wpath, meta.architecture).to(map_location)
        if "class" in (meta.architecture or {}):
            check_forward_inputs(module, meta.inputs, meta.architecture["class"])
    elif meta.format == "torchscript":
        _refuse_plain_pickle(wpath)
        try:
            module = torch.jit.load(wpath, map_location=map_location).eval()
        except RuntimeError as e:
            raise ModelError(f"{wpath}: cannot load TorchScript: {e}") from e
    else:
        try:
            ep = torch.export.load(wpath)
        except Exception as e:  # torch raises several types for a bad archive
            raise ModelError(f"{wpath}: cannot load torch.export program: {e}") from e
        module = ep.module().to(map_location)
    return LoadedModel(module=module, meta=meta, path=path)
