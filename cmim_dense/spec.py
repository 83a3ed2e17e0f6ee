"""Declarative quantizer specifications.

A :class:`Spec` names a registered building block (an estimator, an input binarizer or a
weight binarizer) together with its keyword arguments.  Recipes are written with specs
instead of objects so that a method is data: it can be printed, compared, stored in a
checkpoint's metadata as JSON and rebuilt from it.  This module imports no torch, so the
recipes, and the command lines that list them, load in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Spec:
    """A registered name plus keyword arguments, e.g. ``Spec("ede", t_min=0.1, t_max=10.0)``."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, **kwargs: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "kwargs", dict(kwargs))

    def __hash__(self) -> int:
        return hash((self.name, repr(sorted(self.kwargs.items()))))

    def replace(self, **kwargs: Any) -> "Spec":
        """A copy with some keyword arguments changed."""
        return Spec(self.name, **{**self.kwargs, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; nested specs become nested dicts."""
        out: dict[str, Any] = {"name": self.name}
        for key, value in self.kwargs.items():
            out[key] = value.to_dict() if isinstance(value, Spec) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Spec":
        """Inverse of :meth:`to_dict`."""
        kwargs = {
            key: cls.from_dict(value) if isinstance(value, dict) and "name" in value else value
            for key, value in data.items()
            if key != "name"
        }
        return cls(data["name"], **kwargs)

    def __str__(self) -> str:
        if not self.kwargs:
            return self.name
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"
