"""Lazy package attributes (PEP 562): a package's public names import their modules on first use.

``voxprompt --help``, ``import voxprompt`` and ``import voxprompt.errors`` then load neither torch nor
SimpleITK/scipy; ``voxprompt.load_model`` (or ``from voxprompt import load_model``) imports the models
the first time it is looked up. Usage, at the end of a package's ``__init__.py``::

    __getattr__, __dir__ = lazy_attributes(__name__, {"load_model": ".models.loading", ...})
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for ``package``.

    ``exports`` maps each lazily loaded public name to the module (relative to ``package``) that defines
    it. A name that is not exported but is a submodule (``voxprompt.session``) imports that submodule;
    anything else raises AttributeError as for any module.
    """
    exports = dict(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module, package), name)
        elif _is_submodule(package, name):
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


def _is_submodule(package: str, name: str) -> bool:
    if not name.isidentifier() or name.startswith("__"):
        return False
    return importlib.util.find_spec(f"{package}.{name}") is not None
