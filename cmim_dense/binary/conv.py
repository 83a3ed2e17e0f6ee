"""The binary convolution: one input binarizer + one weight binarizer around ``F.conv2d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activation import InputBinarizer, build_input_binarizer
from ..spec import Spec
from .weight import build_weight_binarizer

PAD_VALUES = (0.0, 1.0, -1.0)


def tensor_versions(tensors: list[Tensor]) -> list[tuple[Tensor, int, int, torch.dtype, torch.device]]:
    """Each tensor with its in-place modification counter, storage address, dtype and device now,
    for :func:`unchanged`."""
    return [(t, t._version, t.data_ptr(), t.dtype, t.device) for t in tensors]


def unchanged(held: list[tuple[Tensor, int, int, torch.dtype, torch.device]], tensors: list[Tensor]) -> bool:
    """Whether ``tensors`` are the very tensors recorded by :func:`tensor_versions` (by identity:
    a replaced parameter or loaded state counts as a change), none was modified in place since,
    and none had its data swapped: ``module.double()`` or ``.to(device)`` keep a parameter's
    identity and version but give it new storage."""
    return len(held) == len(tensors) and all(
        h is t and (version, address, dtype, device) == (t._version, t.data_ptr(), t.dtype, t.device)
        for (h, version, address, dtype, device), t in zip(held, tensors))


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
        self._weight_cache: tuple[list[tuple[Tensor, int, int, torch.dtype, torch.device]], Tensor] | None = None

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
            self._weight_cache = None
            return self.effective_weight()
        cache = self._weight_cache
        if cache is None or not unchanged(cache[0], sources):
            self._weight_cache = cache = (tensor_versions(sources), self.effective_weight().detach())
        return cache[1]

    def forward(self, x: Tensor) -> Tensor:
        xb = self.input_binarizer(x) if self.input_binarizer is not None else x
        weight = self.forward_weight()
        padding = self.padding
        if self.pad_value != 0.0 and any(padding):
            ph, pw = padding
            xb = F.pad(xb, (pw, pw, ph, ph), value=self.pad_value)
            padding = (0, 0)
        if self.input_binarizer is not None and torch.is_autocast_enabled(xb.device.type):
            # float16/bfloat16 cannot hold sums of up to C*k*k products of +-1 exactly: binary
            # convolutions run in float32 under autocast (the rest of the network stays in half)
            with torch.autocast(xb.device.type, enabled=False):
                out = F.conv2d(xb.float(), weight.float(), None if self.bias is None else self.bias.float(),
                               self.stride, padding, self.dilation, self.groups)
        else:
            out = F.conv2d(xb, weight, self.bias, self.stride, padding, self.dilation, self.groups)
        if self.input_scale:
            out = out * self._xnor_k_map(x)
        return out

    def _xnor_k_map(self, x: Tensor) -> Tensor:
        magnitude = x.abs().mean(dim=1, keepdim=True)
        kh, kw = self.kernel_size
        box = magnitude.new_full((1, 1, kh, kw), 1.0 / (kh * kw))
        return F.conv2d(magnitude, box, None, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.pad_value != 0.0:
            extra += f", pad_value={self.pad_value:g}"
        if self.input_scale:
            extra += ", input_scale=True"
        return extra
