"""Collect latent and binary activations (a_F, a_B) from one forward pass, for CMIM."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from torch import Tensor, nn

from ..binary import BinaryConv2d

LAYER_GROUPS = ("all", "blocks", "stages")


@dataclass
class Tap:
    """One binary activation site: ``latent`` = a_F (what the sign sees), ``binary`` = a_B = sign(a_F)."""

    name: str
    latent: Tensor
    binary: Tensor


def select_sites(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Site names for a group or an explicit list.

    ``all``: the input of every main-path binary conv; ``blocks``: the last binary conv of
    every residual block; ``stages``: the last binary conv of every stage (one site per
    resolution, from /4 to /32 on ImageNet).  Explicit names must come from ``tap_sites()``.
    """
    nested = model.tap_sites()
    every = [site for stage in nested for block in stage for site in block]
    if not every:
        raise ValueError(f"{model.recipe.name} has no binary activations to tap; pick a binary method")
    if isinstance(layers, str):
        if layers == "all":
            return every
        if layers == "blocks":
            return [block[-1] for stage in nested for block in stage]
        if layers == "stages":
            return [stage[-1][-1] for stage in nested]
        raise ValueError(f"unknown layer group {layers!r}; valid: {', '.join(LAYER_GROUPS)} or site names")
    unknown = [name for name in layers if name not in every]
    if unknown:
        raise ValueError(f"unknown tap sites {unknown}; valid: {', '.join(every)}")
    return list(layers)


@contextmanager
def collect_taps(model: nn.Module, layers: str | Sequence[str] = "stages") -> Iterator[dict[str, Tap]]:
    """Within the block, every forward of ``model`` fills the yielded dict with one
    :class:`Tap` per selected site (the latest forward wins).  Gradients flow through both
    tensors, so a loss on them trains the backbone; nothing is computed twice."""
    taps: dict[str, Tap] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in select_sites(model, layers):
        conv = modules[name]
        assert isinstance(conv, BinaryConv2d) and conv.input_binarizer is not None

        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, name: str = name) -> None:
            taps[name] = Tap(name, inputs[0], output)

        handles.append(conv.input_binarizer.sign.register_forward_hook(record))
    try:
        yield taps
    finally:
        for handle in handles:
            handle.remove()
