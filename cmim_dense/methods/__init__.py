"""Named method recipes.  ``get_recipe("rbnn+cmim")`` parses the method grammar.

Every module in this package other than :mod:`.recipe` defines one method and registers
it with :func:`register`; modules are discovered automatically, so adding a method means
adding one file here.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from ..registry import Registry, UnknownNameError
from .recipe import CMIM_CHOICES, CMIM_FLAGS, CMIM_SWEEPS, CMIMConfig, Recipe, TrainingDefaults

RECIPES: Registry[Recipe] = Registry("method")
SUFFIXES = ("cmim",)


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the registry under its name."""
    return RECIPES.add(recipe.name, recipe)


def split_method(method: str) -> tuple[str, list[str]]:
    """The method-name grammar ``NAME[+SUFFIX...]``, case-insensitive: ``"RBNN+cmim"`` -> ("rbnn", ["cmim"])."""
    base_name, *suffixes = method.strip().lower().split("+")
    return base_name, suffixes


def base_method(method: str) -> str:
    """``rbnn+cmim`` -> ``rbnn`` (the method without the CMIM loss)."""
    return split_method(method)[0]


def has_cmim(method: str) -> bool:
    """Whether a method name asks for the CMIM loss (``NAME+cmim``)."""
    return "cmim" in split_method(method)[1]


def get_recipe(method: str, cmim: CMIMConfig | None = None) -> Recipe:
    """The recipe for ``NAME`` or ``NAME+cmim``; ``cmim`` overrides the default CMIM settings."""
    base_name, suffixes = split_method(method)
    try:
        recipe = RECIPES.get(base_name)
    except UnknownNameError:
        valid = ", ".join(RECIPES.names())
        raise UnknownNameError(
            f"unknown method {method!r}; valid: {valid} (each may take '+cmim')"
        ) from None
    for suffix in suffixes:
        if suffix not in SUFFIXES:
            raise UnknownNameError(f"unknown method suffix '+{suffix}' in {method!r}; valid: +cmim")
    if len(suffixes) != len(set(suffixes)):
        raise UnknownNameError(f"method {method!r} repeats a suffix")
    if "cmim" in suffixes:
        if recipe.input_binarizer is None:
            raise UnknownNameError(
                f"method {method!r}: CMIM contrasts binary activations with their latent values, "
                f"and {base_name} has no binary activations; pick a binary method"
            )
        recipe = dataclasses.replace(recipe, name=f"{base_name}+cmim", cmim=cmim or CMIMConfig())
    return recipe


def list_recipes() -> list[Recipe]:
    """Every registered base recipe, sorted by name."""
    return [RECIPES.get(name) for name in RECIPES.names()]


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "recipe":
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["CMIM_CHOICES", "CMIM_FLAGS", "CMIM_SWEEPS", "CMIMConfig", "RECIPES", "Recipe", "TrainingDefaults", "base_method", "get_recipe",
           "has_cmim", "list_recipes", "register", "split_method"]
