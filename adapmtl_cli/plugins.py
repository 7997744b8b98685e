"""A user's factory functions, named in a preset as ``"package.module:function"`` or
``"path/to/file.py:function"`` (``model.factory``, ``data.factory``).

A module spec is imported as ``python -m`` would find it: the current directory comes first on
``sys.path`` (uvicorn does the same). A file spec is loaded from that file (relative paths are made
absolute when the preset is read, see ``config.anchor_factory_files``), once per process, under a
module name derived from its path (or as the module already imported from that file); its folder is appended to ``sys.path`` so it can import its
siblings. Every fault is one :class:`ConfigError` line naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from adapmtl_cli.config import split_factory
from adapmtl_cli.errors import ConfigError


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` (just the type when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_factory(spec: str, key: str) -> Callable:
    """The callable a factory spec names; ``key`` (``model.factory``) is used in messages."""
    label = f"{key} = {spec!r}"
    try:
        target, function, is_file = split_factory(spec)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    module = _load_file(target, label) if is_file else _import_module(target, label)
    value: Any = module
    for part in function.split("."):
        if not hasattr(value, part):
            names = [name for name in dir(value) if not name.startswith("_")]
            match = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            where = target if value is module else f"{target}:{function.rsplit('.', 1)[0]}"
            raise ConfigError(f"{label}: {where} has no {part!r}{hint}")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"{label}: {function!r} is a {type(value).__name__}, not a function; name a function that builds it")
    return value


def call_factory(function: Callable, spec: str, key: str, *args, **kwargs):
    """``function(*args, **kwargs)``; an exception it raises becomes one line naming the key."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a user's code may raise anything
        raise ConfigError(f"{key} = {spec!r} raised {describe_exception(exc)}; fix the function or "
                          f"{key}_args") from None


def _import_module(name: str, label: str):
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"{label}: cannot import module {name!r} (no module named {exc.name!r} from {cwd}); "
                              "run from the folder that holds it, install it, or use 'path/to/file.py:function'") from None
        raise ConfigError(f"{label}: importing module {name!r} failed ({describe_exception(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - the module's own code may raise anything
        raise ConfigError(f"{label}: importing module {name!r} failed ({describe_exception(exc)})") from None


def _load_file(target: str, label: str):
    path = Path(target).resolve()
    if not path.is_file():
        raise ConfigError(f"{label}: no such file {path}; give a path relative to the preset's folder (or, in an override, "
                          "to the current directory)")
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:10]
    name = f"adapmtl_factory_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    loaded = _module_of_file(path)
    if loaded is not None:  # already imported under its own name: one copy of its classes
        return loaded
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{label}: {path} cannot be loaded as a Python module; name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as import does (dataclasses, pickling)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the file's own code may raise anything
        del sys.modules[name]
        raise ConfigError(f"{label}: loading {path} failed ({describe_exception(exc)})") from None
    return module


def _module_of_file(path: Path):
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and file.endswith(".py") and Path(file).name == path.name:
            try:
                if Path(file).resolve() == path:
                    return module
            except OSError:
                continue
    return None
