"""Whole models on the packed kernel: their binary convolutions packed, the XNOR-popcount forward on,
the BatchNorms that follow folded into it; and such a copy of a frozen float model kept in step with it."""

from __future__ import annotations

import copy

from torch import nn

from ..binary import BinaryConv2d
from ..binary.derived import Derived
from .conv import PackedBinaryConv2d, runs_packed
from .fuse import fuse_epilogues
from .native import native_library


def pack_model(model: nn.Module, pack: bool = True) -> list[str]:
    """Replace, in place, every binary-weight ``BinaryConv2d`` of ``model`` by a :class:`PackedBinaryConv2d`.

    Binary weights and scales are taken from each layer's eval-mode ``effective_weight()``
    (``pack=False``: left zero, for a skeleton whose state is loaded next).  Returns the
    names of the replaced layers.
    """
    targets = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, BinaryConv2d) and module.binary_weights
    ]
    for name, conv in targets:
        if not name:
            raise ValueError("the model is itself a BinaryConv2d; wrap it (e.g. nn.Sequential(conv)) to pack it")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        packed = PackedBinaryConv2d(conv, pack)
        packed.train(conv.training)
        setattr(parent, child, packed)
    return [name for name, _ in targets]


def set_packed(model: nn.Module, enabled: bool = True) -> list[str]:
    """Switch the XNOR-popcount forward on (or off) in every packed layer that supports it.

    A layer supports it when its inputs are binary and it has one group; others keep the
    float forward.  Returns the names of the layers switched.
    """
    switched = []
    for name, module in model.named_modules():
        if isinstance(module, PackedBinaryConv2d) and module.supports_packed:
            module.packed = enabled
            switched.append(name)
    return switched


def runs_on_the_kernel(model: nn.Module) -> bool:
    """Whether packing ``model`` would put any convolution on the XNOR-popcount kernel (a binary-weight
    conv with binary inputs and one group), and the compiled kernel is available."""
    return any(isinstance(m, BinaryConv2d) and runs_packed(m) for m in model.modules()) and native_library() is not None


def packed_inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` for inference on the kernel: binary convs packed (:func:`pack_model`),
    the packed forward on (:func:`set_packed`), BatchNorms and signs fused (:func:`fuse_epilogues`).
    It computes ``model``'s eval-mode function up to float rounding and sign ties (docs/export.md)."""
    packed = copy.deepcopy(model).eval().requires_grad_(False)
    pack_model(packed)
    set_packed(packed)
    fuse_epilogues(packed)
    return packed


class PackedInference:
    """The :func:`packed_inference_copy` of a float module, built on first use and built again when any
    of the module's parameters or buffers is replaced, modified in place, or moved (a loaded state,
    ``.to()``): a :class:`~cmim_dense.binary.derived.Derived` value, so not part of the module tree or
    its state dict, and not copied with the module that holds it."""

    def __init__(self) -> None:
        self._copy: Derived[nn.Module] = Derived()

    def of(self, module: nn.Module) -> nn.Module:
        return self._copy.get([*module.parameters(), *module.buffers()], lambda: packed_inference_copy(module))
