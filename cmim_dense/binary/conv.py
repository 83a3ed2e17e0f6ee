"""The binary convolution: one input binarizer + one weight binarizer around ``F.conv2d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activation import InputBinarizer, build_input_binarizer
from .derived import Derived
from ..spec import Spec
from .weight import build_weight_binarizer

PAD_VALUES = (0.0, 1.0, -1.0)


def binary_conv2d(xb: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                  padding: tuple[int, int], dilation: tuple[int, int], groups: int, pad_value: float,
                  binary_inputs: bool) -> Tensor:
    """``F.conv2d`` of a (binarized) input padded with ``pad_value`` (see :class:`BinaryConv2d`).

    Under autocast a convolution of binary inputs runs in float32: float16/bfloat16 cannot hold sums
    of up to C*k*k products of +-1 exactly (the rest of the network stays in half precision)."""
    if pad_value != 0.0 and any(padding):
        ph, pw = padding
        xb = F.pad(xb, (pw, pw, ph, ph), value=pad_value)
        padding = (0, 0)
    if binary_inputs and torch.is_autocast_enabled(xb.device.type):
        with torch.autocast(xb.device.type, enabled=False):
            return F.conv2d(xb.float(), weight.float(), None if bias is None else bias.float(),
                            stride, padding, dilation, groups)
    return F.conv2d(xb, weight, bias, stride, padding, dilation, groups)


def xnor_k_map(x: Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int]) -> Tensor:
    """XNOR-Net's K map (Rastegari et al. 2016, Sec. 3.2): ``K = A * k``, A the channel mean of ``|x|``,
    k an averaging box of the kernel's size, with the convolution's stride, padding and dilation."""
    magnitude = x.abs().mean(dim=1, keepdim=True)
    kh, kw = kernel_size
    box = magnitude.new_full((1, 1, kh, kw), 1.0 / (kh * kw))
    return F.conv2d(magnitude, box, None, stride, padding, dilation)


class BinaryConv2d(nn.Conv2d):
    """A convolution declared by its quantizers, in the manner of larq's ``QuantConv2d``.

    ``y = conv(input_binarizer(x), weight_binarizer(W))``; either binarizer may be None
    (real-valued inputs or weights, e.g. ReActNet's first training step).  Subclassing
    ``nn.Conv2d`` keeps stride, padding, dilation and groups standard, so code that edits
    those attributes (torchvision/smp dilation) works unchanged.

    Padding convention.  ``pad_value = 0`` (default, as every reference PyTorch
    implementation) zero-pads the *binarized* input, so border taps are ternary
    {-1, 0, +1}; a 1-bit kernel must then correct border outputs.  ``pad_value = +1`` or
    ``-1`` pads with that binary value instead, keeping every tap in {-1, +1}.

    ``input_scale=True`` multiplies the output by XNOR-Net's K map (Rastegari et al. 2016,
    Sec. 3.2): K = A * k, A = channel-mean of |x|, k an averaging box of the kernel's size,
    evaluated with the same stride, padding and dilation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        *,
        input_binarizer: Spec | None = None,
        weight_binarizer: Spec | None = None,
        pad_value: float = 0.0,
        input_scale: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if pad_value not in PAD_VALUES:
            raise ValueError(f"pad_value must be one of {PAD_VALUES}, got {pad_value}")
        self.input_binarizer: InputBinarizer | None = (
            build_input_binarizer(input_binarizer, in_channels) if input_binarizer is not None else None
        )
        self.weight_binarizer: nn.Module | None = (
            build_weight_binarizer(weight_binarizer, self.weight) if weight_binarizer is not None else None
        )
        self.pad_value = float(pad_value)
        self.input_scale = input_scale
        self._weight_cache: Derived[Tensor] = Derived()

    @property
    def binary_weights(self) -> bool:
        return self.weight_binarizer is not None

    @property
    def binary_inputs(self) -> bool:
        return self.input_binarizer is not None

    def effective_weight(self) -> Tensor:
        """The weight the convolution uses: binarized (with its scale) or latent."""
        return self.weight_binarizer(self.weight) if self.weight_binarizer is not None else self.weight

    def forward_weight(self) -> Tensor:
        """:meth:`effective_weight`, reused while no gradient can flow to it and none of the
        tensors it is computed from has changed (a frozen backbone, evaluation): binarizing
        (or rotating, standardizing) 11M weights on every forward is otherwise ~40 % of a
        frozen binary ResNet-18's forward at small inputs.

        Under ``torch.compile`` the weight is binarized in the compiled program on every call
        (the same value): the cache's validity is a Python-side identity and version check,
        which a compiled graph cannot hold, and the compiled binarization is fused."""
        if self.weight_binarizer is None:
            return self.weight
        if torch.compiler.is_compiling():
            return self.effective_weight()
        sources = [self.weight, *self.weight_binarizer.parameters(), *self.weight_binarizer.buffers()]
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            self._weight_cache.clear()
            return self.effective_weight()
        return self._weight_cache.get(sources, lambda: self.effective_weight().detach())

    def forward(self, x: Tensor) -> Tensor:
        xb = self.input_binarizer(x) if self.input_binarizer is not None else x
        out = binary_conv2d(xb, self.forward_weight(), self.bias, self.stride, self.padding, self.dilation,
                            self.groups, self.pad_value, self.binary_inputs)
        if self.input_scale:
            out = out * xnor_k_map(x, self.kernel_size, self.stride, self.padding, self.dilation)
        return out

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.pad_value != 0.0:
            extra += f", pad_value={self.pad_value:g}"
        if self.input_scale:
            extra += ", input_scale=True"
        return extra
