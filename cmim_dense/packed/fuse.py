"""Fuse the BatchNorm (and sign) that follow packed binary convolutions into the kernel's epilogue.

Two fusions, for inference (eval mode, BatchNorm running statistics):

- **scale + bias + BatchNorm.**  A packed conv followed by a BatchNorm computes
  ``gamma (s_o dot + bias - mean) / sqrt(var + eps) + beta = alpha_o dot + beta_o``, one multiply-add
  per output on the integer ``dot = K - 2 popcount(x XOR w)`` (XNOR-Net Sec. 3.2).  Applies to every
  (conv, BN) pair of the residual blocks and of ``nn.Sequential`` containers (BNN's binary 1x1
  shortcut) whose conv has no XNOR-Net K map (the K map multiplies per pixel between the two).
- **BatchNorm + sign as a threshold.**  When that BatchNorm's output reaches only another binary
  conv's plain sign, ``alpha dot + beta >= 0`` is an integer threshold on ``dot`` (the comparison
  flips where ``alpha < 0``), and the first conv writes packed bits in the second's input layout:
  the activation never leaves the bit domain.  That is the case inside a ``basic`` block
  (conv1 -> BN -> hardtanh or identity -> conv2: BNN, XNOR-Net, the CIFAR IR-Net), where
  sign(hardtanh(v)) = sign(v).  Bi-Real-style blocks (Bi-Real, IR-Net, RBNN, ReActNet on ImageNet)
  add a real shortcut after every BatchNorm, so their convs keep the float epilogue.

A folded BatchNorm moves into its conv (``block.bn1`` becomes ``block.conv1.bn``, ``block.bn1`` an
``nn.Identity``), so a fused model's state dict names it there; exports are written unfused.
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from ..models.blocks import BasicBlock
from .native import PackedBits
from .conv import PackedBinaryConv2d


class SignPreserving(nn.Module):
    """An activation with sign(act(v)) = sign(v) before a binary conv: applied to floats, packed bits pass."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: Tensor | PackedBits) -> Tensor | PackedBits:
        return x if isinstance(x, PackedBits) else self.act(x)


def _preserves_sign(act: nn.Module) -> bool:
    if isinstance(act, nn.Hardtanh):
        return act.min_val < 0 <= act.max_val
    return isinstance(act, nn.Identity)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv attribute, BN attribute) wherever a BatchNorm directly follows a packed conv's output:
    the pairs a module declares in ``FOLDABLE`` (the residual blocks, a binary head's units) and
    consecutive children of an ``nn.Sequential`` (BNN's binary 1x1 shortcut)."""
    pairs = []
    for module in model.modules():
        pairs += [(module, conv, bn) for conv, bn in getattr(module, "FOLDABLE", ())]
        if isinstance(module, nn.Sequential):
            pairs += [(module, a, b) for a, b in itertools.pairwise(module._modules)]
    return [(parent, c, b) for parent, c, b in pairs
            if isinstance(getattr(parent, c), PackedBinaryConv2d) and not getattr(parent, c).input_scale
            and type(getattr(parent, b)) is nn.BatchNorm2d]


def fuse_epilogues(model: nn.Module) -> dict[str, list[str]]:
    """Fold BatchNorms into the packed convs before them and chain BN + sign as packed bits, in place.

    The model must be in eval mode; the function computed is unchanged (up to float rounding of the
    folded affine map, and of values within rounding of a sign threshold).  Returns the names of the
    convs given a BatchNorm (``"batchnorm"``) and of those emitting packed bits (``"bits"``).
    """
    if model.training:
        raise ValueError("fuse_epilogues is for inference: call model.eval() first")
    names = {module: name for name, module in model.named_modules()}
    fused: dict[str, list[str]] = {"batchnorm": [], "bits": []}
    for parent, conv_name, bn_name in _conv_bn_pairs(model):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        conv.fold(bn)
        setattr(parent, bn_name, nn.Identity())
        fused["batchnorm"].append(names[conv])
    for block in model.modules():
        if (isinstance(block, BasicBlock) and isinstance(block.conv1, PackedBinaryConv2d)
                and block.conv1.bn is not None and isinstance(block.conv2, PackedBinaryConv2d)
                and _preserves_sign(block.act1) and block.conv2.takes_bits):
            block.conv1.emit_bits_to(block.conv2)
            block.act1 = SignPreserving(block.act1)
            fused["bits"].append(names[block.conv1])
    return fused
