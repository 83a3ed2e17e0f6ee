"""Public names of a package imported on first use (PEP 562 module ``__getattr__``).

A package whose ``__init__`` imported its submodules would load torch for any command line that
lives in it (``python -m cmim_dense.export --help``); with :func:`lazy_attributes` the package
imports nothing until one of its names is used.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``homes`` maps each public name to the module that defines
    it, relative to ``package`` (``"export"`` is ``package.export``, ``".packed"`` a sibling package);
    the name is imported from there on first use and kept on the package, and any other name is an
    AttributeError as usual."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
