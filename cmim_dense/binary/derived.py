"""A value derived from tensors, kept until any of them changes: the one cache behind a frozen layer's
binarized weight, a packed layer's kernel operands and a frozen backbone's packed copy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

_State = tuple[int, int, torch.dtype, torch.device]


def _state(tensor: Tensor) -> _State:
    """What changes when a tensor is modified in place (its version) or its data moves."""
    return tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device


class Derived(Generic[T]):
    """``get(sources, build)`` returns ``build()``'s value, built again only when ``sources`` differ from
    those of the last build: another tensor (a replaced parameter, a loaded state), a tensor modified in
    place (its version counter), or one whose data moved (``.to(device)`` or ``.double()`` keep a
    parameter's identity and version but give it new storage).

    Not state: a module's ``Derived`` attribute is outside its state dict, and a deep copy of the
    module starts with an empty one (it would otherwise copy the value and hold the original's tensors).
    """

    def __init__(self) -> None:
        self._stamps: list[tuple[Tensor, _State]] = []
        self._value: T | None = None

    def get(self, sources: Sequence[Tensor], build: Callable[[], T]) -> T:
        if self._value is None or not self._current(sources):
            self._value = None  # the old value is freed before the new one is built
            self._value, self._stamps = build(), [(t, _state(t)) for t in sources]
        return self._value

    def clear(self) -> None:
        self._stamps, self._value = [], None

    def _current(self, sources: Sequence[Tensor]) -> bool:
        return len(self._stamps) == len(sources) and all(
            held is t and state == _state(t) for (held, state), t in zip(self._stamps, sources))

    def __deepcopy__(self, memo: dict) -> Derived[T]:
        return Derived()
