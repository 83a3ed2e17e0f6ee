"""This package's backbones by name in timm and segmentation_models_pytorch, without a call.

``import cmim_dense`` stays light (no torch): it only asks to be told when ``timm`` or
``segmentation_models_pytorch`` has been imported, then registers every backbone there
(``timm.create_model("cmim_resnet18_rbnn", ...)``, ``smp.DeepLabV3(encoder_name="cmim-resnet18-rbnn")``).
Where either library was imported before ``cmim_dense``, the backbones are registered at once.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Sequence

# library -> our module that registers every backbone with it when imported (at its end, so that
# a module caught half-imported, e.g. one that is importing the library itself, still does)
REGISTRARS = {"timm": "cmim_dense.models.timm_models", "segmentation_models_pytorch": "cmim_dense.dense.encoder"}


def register_with(library: str) -> None:
    """Register every backbone with ``library`` (a key of :data:`REGISTRARS`); a failure warns
    instead of breaking the user's import of that library."""
    try:
        importlib.import_module(REGISTRARS[library])
    except Exception as error:  # never break `import timm` over a plug-in
        warnings.warn(f"cmim_dense could not register its backbones with {library}: {error}", stacklevel=2)


class RegisterAfterImport(importlib.abc.MetaPathFinder):
    """A finder that finds nothing itself: when one of the libraries is about to be imported it
    asks the other finders for its spec and has that spec's loader register our backbones once
    the library's module has run."""

    def __init__(self, libraries: Sequence[str]) -> None:
        self.pending = set(libraries)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)  # asked once: the lookup below does not come back here
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            register_with(fullname)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's loader only
        return spec


def install() -> None:
    """Register with the libraries already imported; be told of the others' import."""
    waiting = []
    for library in REGISTRARS:
        if library in sys.modules:
            register_with(library)
        else:
            waiting.append(library)
    if waiting and not any(isinstance(finder, RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, RegisterAfterImport(waiting))
