"""Turns a recipe into layers: convolutions at binary positions, activations, shortcuts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..binary import BinaryConv2d, RPReLU
from ..methods.recipe import Recipe


@dataclass(frozen=True)
class LayerFactory:
    """Builds the layers a recipe declares; ``real_weights`` drops the weight binarizer
    (ReActNet's first training step: binary activations, real-valued weights)."""

    recipe: Recipe
    real_weights: bool = False

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
        """A convolution at a binary position: binary for binary recipes, plain for ``fp``."""
        padding = dilation * (kernel // 2)
        if not self.recipe.is_binary:
            return nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False)
        return BinaryConv2d(
            cin,
            cout,
            kernel,
            stride,
            padding,
            dilation,
            input_binarizer=self.recipe.input_binarizer,
            weight_binarizer=None if self.real_weights else self.recipe.weight_binarizer,
            pad_value=self.recipe.pad_value,
            input_scale=self.recipe.input_scale,
        )

    def activation(self, kind: str, channels: int) -> nn.Module:
        if kind == "relu":
            return nn.ReLU(inplace=True)
        if kind == "hardtanh":
            return nn.Hardtanh()
        if kind == "rprelu":
            return RPReLU(channels)
        if kind == "identity":
            return nn.Identity()
        raise ValueError(f"unknown activation {kind!r}; valid: relu, hardtanh, rprelu, identity")

    def block_activation(self, channels: int) -> nn.Module:
        return self.activation(self.recipe.block_act, channels)

    def downsample(self, cin: int, cout: int, stride: int, destrided_step: int = 0) -> nn.Module | None:
        """The shortcut of a block that changes shape (None when the identity fits).

        ``destrided_step`` > 0 marks the first block of a stage whose stride 2 was replaced by
        dilation (dense heads): its input map is sampled every ``destrided_step`` positions, and
        a Bi-Real average-pool shortcut then averages the same 2x2 window at that spacing
        (:class:`DestridedAvgPool2x2`), so the dilated network stays the pretrained one.
        """
        if stride == 1 and cin == cout and not destrided_step:
            return None
        kind = self.recipe.downsample
        if kind == "conv":
            return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        if kind == "avgpool_conv":
            pool: nn.Module = nn.Identity()
            if stride > 1:
                pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
            elif destrided_step:
                pool = DestridedAvgPool2x2(destrided_step)
            return nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        if kind == "binary_conv":
            return nn.Sequential(self.conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        raise ValueError(f"unknown downsample {kind!r}; valid: conv, avgpool_conv, binary_conv")


class DestridedAvgPool2x2(nn.Module):
    """``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)`` with its stride turned into
    dilation: out[i, j] = mean of x[i + a*step, j + b*step] over a, b in {0, 1} that fall inside
    the map.  Sampled every 2*step positions it equals the strided pool of the map sampled every
    ``step`` positions (the a trous identity of torchvision's dilated ResNets, here for Bi-Real's
    pooled shortcut)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def forward(self, x: Tensor) -> Tensor:
        s = self.step
        padded = F.pad(x, (0, s, 0, s))
        inside = F.pad(torch.ones_like(x[:1, :1]), (0, s, 0, s))
        window_sum = padded[..., :-s, :-s] + padded[..., s:, :-s] + padded[..., :-s, s:] + padded[..., s:, s:]
        count = inside[..., :-s, :-s] + inside[..., s:, :-s] + inside[..., :-s, s:] + inside[..., s:, s:]
        return window_sum / count
