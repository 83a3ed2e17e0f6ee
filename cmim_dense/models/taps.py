"""Collect latent and binary activations (a_F, a_B) from one forward pass, for CMIM."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from torch import Tensor, nn

from ..binary import BinaryConv2d, InputBinarizer

LAYER_GROUPS = ("all", "blocks", "stages")


@dataclass
class Tap:
    """One binary activation site: ``latent`` = a_F (the value whose sign is taken), ``binary`` = a_B = sign(a_F)."""

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
    :class:`Tap` per selected site (the latest forward wins).

    a_F is the output of the input binarizer's ``pre``, before any sign-preserving rescale
    (RBNN's division by the per-sample std); a_B is the binarizer's output, whose gradient
    with respect to a_F passes the sign's estimator but not the rescale (see
    :meth:`~cmim_dense.binary.InputBinarizer.sign_past_rescale`): a loss on the taps then
    reaches the backbone at a_F's own scale, whatever the recipe puts between its BatchNorm
    and its sign.  Nothing is computed twice for binarizers without a rescale.
    """
    taps: dict[str, Tap] = {}
    latents: dict[str, Tensor] = {}
    anchors: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in select_sites(model, layers):
        conv = modules[name]
        assert isinstance(conv, BinaryConv2d) and conv.input_binarizer is not None
        binarizer = conv.input_binarizer

        def record_latent(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, name: str = name) -> None:
            latents[name] = output

        def record_rescaled(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, name: str = name,
                            binarizer: InputBinarizer = binarizer) -> None:
            anchors[name] = binarizer.sign_past_rescale(inputs[0], output)

        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, name: str = name) -> None:
            taps[name] = Tap(name, latents.pop(name), anchors.pop(name, output))

        handles.append(binarizer.pre.register_forward_hook(record_latent))
        if binarizer.rescales:
            handles.append(binarizer.rescale.register_forward_hook(record_rescaled))
        handles.append(binarizer.register_forward_hook(record))
    try:
        yield taps
    finally:
        for handle in handles:
            handle.remove()
