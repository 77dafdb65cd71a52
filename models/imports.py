"""Your code named in a config (`model.class_path`, `preprocessing.function`), imported by path.

A module beside the config, or in the working directory, imports without PYTHONPATH, as recipe
tools do: loading a config calls `allow_imports_from` with those folders. The one that holds the
named module goes on sys.path and on PYTHONPATH (so the worker processes of a Ray started later
find it too); an import that fails names the folders searched. Standard library only: loaded before torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any

_SEARCHED: list[str] = []  # the folders allow_imports_from added, for the error message


class ModelError(ValueError):
    """A model or checkpoint cannot be used: what was wrong, and with which file. (Here because
    the code an import path names is part of the model; models.checkpoint re-exports it.)"""


def allow_imports_from(folders: list[str], paths: list[str]) -> None:
    """Make the modules the import `paths` name importable from `folders` in this process and in
    the processes it starts. Only a folder that holds one of them goes on the path (first, as
    `python -m` puts the working directory): a folder's other files could shadow a library."""
    wanted = {split_path(p)[0].split(".")[0] for p in paths}
    for folder in reversed([os.path.abspath(f) for f in folders]):
        if folder not in _SEARCHED:
            _SEARCHED.insert(0, folder)
        holds = any(
            os.path.isfile(os.path.join(folder, f"{name}.py")) or os.path.isdir(os.path.join(folder, name))
            for name in wanted
        )
        if holds and folder not in sys.path:
            sys.path.insert(0, folder)
        if holds:
            known = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([folder, *known]))


def searched_folders() -> list[str]:
    return list(_SEARCHED)


def split_path(path: str) -> tuple[str, str]:
    """`package.module:Name` (or `package.module.Name`) -> (module, attribute path)."""
    mod_name, sep, attr = path.partition(":")
    if not sep:
        mod_name, _, attr = path.rpartition(".")
    if not mod_name or not attr:
        raise ModelError(f"import path {path!r}: expected 'package.module:Name'")
    return mod_name, attr


def _where() -> str:
    if _SEARCHED:
        folders = ", ".join(_SEARCHED)
        return f"looked in {folders} (the config's folder, the working directory) and the Python path"
    return "looked on the Python path (PYTHONPATH and the installed packages)"


def import_module(path: str, mod_name: str) -> Any:
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise ModelError(
                f"import path {path!r}: cannot import module {mod_name!r}: {_where()}; put the "
                "module beside the config, or add its folder to PYTHONPATH"
            ) from None
        raise ModelError(f"import path {path!r}: importing {mod_name!r} failed: {e}") from e
    except Exception as e:  # a SyntaxError or an exception the module raises while it loads
        raise ModelError(
            f"import path {path!r}: importing {mod_name!r} failed: {type(e).__name__}: {e}"
        ) from e


def import_object(path: str) -> Any:
    """`package.module:Name` (or `package.module.Name`) -> the object."""
    mod_name, attr = split_path(path)
    obj: Any = import_module(path, mod_name)
    owner = mod_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"import path {path!r}: {owner!r} has no attribute {part!r}")
        obj = getattr(obj, part)
        owner = f"{owner}.{part}"
    return obj


def module_file(path: str) -> str | None:
    """The source file of the module an import path names (None: built in, or no file)."""
    mod_name, _ = split_path(path)
    try:
        spec = importlib.util.find_spec(mod_name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec else None
    return origin if origin and os.path.isfile(origin) else None


def source_digest(paths: list[str]) -> str | None:
    """A hash of the source files that define the objects `paths` name: a change to that code is
    a change of the scores, as a change of the weights is. None when none of them has a file."""
    files = sorted({f for f in (module_file(p) for p in paths) if f})
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()[:24]


def top_level_location(path: str) -> str | None:
    """Where the top-level package or module of an import path lives: its folder (a package) or
    its .py file. What `submit` ships in py_modules."""
    top = split_path(path)[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return spec.origin if spec.origin and os.path.isfile(spec.origin) else None
