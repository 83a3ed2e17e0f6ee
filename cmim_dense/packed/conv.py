"""The inference twin of a binary convolution: 1-bit weights, and an XNOR-popcount forward.

:class:`PackedBinaryConv2d` is built from a :class:`~cmim_dense.binary.BinaryConv2d` with binary
weights.  It keeps what is real-valued in that layer (its input binarizer, bias, padding value, XNOR
K map) and stores the weight as 1 bit per element plus one scale per output channel:
``W_eff[o] = scale[o] * B[o]``, ``B`` in {-1, +1}.  It has no latent weight and no weight binarizer.

One forward, three ways to compute the convolution, the same function:

- float (``packed = False``, the default): ``F.conv2d`` on the unpacked ``scale * B``, bit-identical
  to the training-time layer in eval mode;
- the compiled kernel (``packed = True``, float32 CPU input, :mod:`.native`): sign and packing, the
  integer ``dot = K - 2 popcount(x XOR w)`` (XNOR-Net Sec. 3.2) and the per-channel epilogue
  ``alpha[o] dot + beta[o]`` (scale, bias and a folded BatchNorm) in one call;
- plain PyTorch (``packed = True`` where the kernel is unavailable, :func:`.xnor.xnor_conv2d`).

A folded BatchNorm (:meth:`PackedBinaryConv2d.fold`, used by :mod:`.fuse`) becomes this layer's
``bn`` submodule, as ``torch.ao.quantization.fuse_modules`` moves a BatchNorm into the conv before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..binary import BinaryConv2d, LearnableBias, PerSampleCenter, binary_sign
from ..binary.conv import binary_conv2d, xnor_k_map
from ..binary.derived import Derived
from .bits import packed_length
from .native import ConvGeometry, NativeLibrary, PackedBits, native_library, xnor_conv2d_native
from .native.kernel import threshold_epilogue, weight_tiles
from .xnor import pack_weight, unpack_weight, xnor_conv2d, zero_padding_correction


def runs_packed(conv: BinaryConv2d | PackedBinaryConv2d) -> bool:
    """Whether ``conv``, packed, can run the XNOR-popcount forward: binary weights, binary inputs, one group."""
    return conv.binary_weights and conv.binary_inputs and conv.groups == 1


@dataclass(frozen=True)
class KernelOperands:
    """What the compiled kernel reads besides the input, derived from the layer's state: the weight
    tiles, the zero-padding tap sums, the float32 epilogue and, when the layer emits bits, its
    threshold form."""

    tiles: Tensor
    tap_sums: Tensor | None
    alpha: Tensor
    beta: Tensor
    thresholds: tuple[Tensor, Tensor] | None


class PackedBinaryConv2d(nn.Module):
    """A binary convolution stored as ``weight_bits`` (uint8, ``(C_out, kh, kw, ceil(C_in / 8))``, see
    :func:`~cmim_dense.packed.xnor.pack_weight`) and ``weight_scale`` (``(C_out,)``), with the optional
    ``bias`` and the input binarizer's parameters, and after :meth:`fold` the BatchNorm ``bn``."""

    def __init__(self, conv: BinaryConv2d, pack: bool = True) -> None:
        """Pack ``conv``'s eval-mode weight; ``pack=False`` leaves zero bits and scales (a skeleton to load into)."""
        super().__init__()
        if conv.weight_binarizer is None:
            raise ValueError("only a BinaryConv2d with binary weights can be packed")
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.pad_value, self.input_scale = conv.pad_value, conv.input_scale
        self.input_binarizer = conv.input_binarizer
        self.bias = conv.bias
        if pack:
            binary, scale = binary_weight_and_scale(conv)
            bits = pack_weight(binary)
        else:
            kh, kw = conv.kernel_size
            shape = (conv.out_channels, kh, kw, packed_length(conv.in_channels // conv.groups))
            bits = torch.zeros(shape, dtype=torch.uint8, device=conv.weight.device)
            scale = torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device)
        self.register_buffer("weight_bits", bits)
        self.register_buffer("weight_scale", scale)
        self.bn: nn.BatchNorm2d | None = None
        self.bits_for: ConvGeometry | None = None  # the next conv's geometry when this one emits packed bits
        self._packed = False
        self._float_weight: Derived[Tensor] = Derived()
        self._kernel_operands: Derived[KernelOperands] = Derived()
        self._corrections: Derived[dict[tuple[int, int], Tensor]] = Derived()

    binary_weights = True

    @property
    def binary_inputs(self) -> bool:
        return self.input_binarizer is not None

    @property
    def supports_packed(self) -> bool:
        """The XNOR-popcount forward needs binary inputs and one group (:func:`runs_packed`)."""
        return runs_packed(self)

    @property
    def packed(self) -> bool:
        """Whether forward runs the XNOR-popcount convolution (False: the float one)."""
        return self._packed

    @packed.setter
    def packed(self, enabled: bool) -> None:
        if enabled and not self.supports_packed:
            raise ValueError("the packed forward needs binary inputs and groups=1")
        self._packed = bool(enabled)

    @property
    def takes_bits(self) -> bool:
        """Whether this layer's input can arrive as packed bits: a plain sign(x) input, one group, no K map."""
        return (self.supports_packed and isinstance(self.input_binarizer.pre, nn.Identity)
                and not self.input_binarizer.rescales and not self.input_scale)

    @property
    def geometry(self) -> ConvGeometry:
        """Shape parameters for the compiled kernel."""
        return ConvGeometry(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                            self.dilation, self.pad_value)

    def binary_weight(self) -> Tensor:
        """The +-1 weights B, ``(C_out, C_in / groups, kh, kw)``."""
        return unpack_weight(self.weight_bits, self.in_channels // self.groups, self.weight_scale.dtype)

    def effective_weight(self) -> Tensor:
        """``scale[o] * B[o]``: the exact tensor the training-time layer used in eval mode."""
        return self.weight_scale.view(-1, 1, 1, 1) * self.binary_weight()

    def fold(self, bn: nn.BatchNorm2d) -> None:
        """Apply ``bn`` (eval mode, running statistics) to this layer's output from now on, as its
        submodule ``bn``; the caller removes it from where it was (:func:`~cmim_dense.packed.fuse.fuse_epilogues`).
        On the kernel it becomes part of the per-channel epilogue ``alpha * dot + beta``."""
        if self.input_scale:
            raise ValueError("a layer with XNOR-Net's K map cannot fold the following BatchNorm (K is per pixel)")
        if bn.training or bn.running_mean is None or bn.running_var is None:
            raise ValueError("only an eval-mode BatchNorm with running statistics can be folded")
        self.bn = bn

    def emit_bits_to(self, consumer: PackedBinaryConv2d) -> None:
        """On the kernel, hand ``consumer`` the packed sign of this layer's (folded) output instead of floats.

        Valid when the folded BatchNorm's output reaches ``consumer`` only through sign-preserving steps
        and ``consumer``'s input binarizer is the plain sign: then sign(alpha dot + beta) is a per-channel
        threshold on the integer dot (:func:`~cmim_dense.packed.native.kernel.threshold_epilogue`).
        """
        if self.bn is None:
            raise ValueError("fold the following BatchNorm first: the bits are the sign of its output")
        if not consumer.takes_bits:
            raise ValueError("the consumer must binarize its input with a plain sign and have no K map")
        self.bits_for = consumer.geometry
        self._kernel_operands.clear()

    def forward(self, x: Tensor | PackedBits) -> Tensor | PackedBits:
        native = self._kernel_for(x)
        if native is not None:  # scale, bias and the folded BatchNorm are the kernel's epilogue
            out = self._convolve_on_kernel(x, native)
        else:
            assert isinstance(x, Tensor)
            out = self._convolve_packed_torch(x) if self.packed else self._convolve_float(x)
            if self.bn is not None:
                bn = self.bn
                out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        if self.input_scale:  # never with bits: a K-map layer neither folds a BatchNorm nor takes bits
            out = out * xnor_k_map(x, self.kernel_size, self.stride, self.padding, self.dilation)
        return out

    def _kernel_for(self, x: Tensor | PackedBits) -> NativeLibrary | None:
        """The compiled kernel if this forward runs on it: packed, and the input packed bits or float32 on a CPU."""
        native = native_library() if self.packed else None
        if isinstance(x, PackedBits):
            if native is None:
                raise ValueError("packed bits reach a layer whose packed forward is off: switch the whole model "
                                 "with set_packed(model, ...), not single layers")
            return native
        return native if native is not None and x.dtype == torch.float32 and x.device.type == "cpu" else None

    def _sources(self) -> list[Tensor]:
        """The tensors every derived operand is computed from."""
        sources = [self.weight_bits, self.weight_scale, *([] if self.bias is None else [self.bias])]
        if self.bn is not None:
            sources += [t for t in (self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var)
                        if t is not None]
        return sources

    def _convolve_float(self, x: Tensor) -> Tensor:
        """``F.conv2d`` with ``scale * B`` (unpacked once per state) and the bias, as the training-time layer."""
        weight = self._float_weight.get(self._sources(), self.effective_weight)
        xb = self.input_binarizer(x) if self.input_binarizer is not None else x
        return binary_conv2d(xb, weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                             self.pad_value, self.binary_inputs)

    def _convolve_on_kernel(self, x: Tensor | PackedBits, native: NativeLibrary) -> Tensor | PackedBits:
        """The compiled kernel: sign + packing, XNOR-popcount, padding correction, then ``alpha dot + beta``
        in float32, or the packed sign of it for the next conv (:meth:`emit_bits_to`)."""
        operands = self._kernel_operands.get(self._sources(), self._build_kernel_operands)
        packed_input, shift = (x, None) if isinstance(x, PackedBits) else self._sign_input(x)
        bits = None if operands.thresholds is None else (*operands.thresholds, self.bits_for)
        return xnor_conv2d_native(native, packed_input, self.geometry, operands.tiles, operands.alpha,
                                  operands.beta, tap_sums=operands.tap_sums, shift=shift, bits=bits)

    def _build_kernel_operands(self) -> KernelOperands:
        alpha, beta = self.epilogue()
        taps = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        zero_padded = self.pad_value == 0.0 and any(self.padding)
        return KernelOperands(
            tiles=weight_tiles(self.weight_bits),
            tap_sums=self.binary_weight().sum(dim=1).flatten(1).to(torch.int32).contiguous() if zero_padded else None,
            alpha=alpha.float().contiguous(), beta=beta.float().contiguous(),
            thresholds=None if self.bits_for is None else threshold_epilogue(alpha, beta, taps))

    def epilogue(self) -> tuple[Tensor, Tensor]:
        """``(alpha, beta)`` of ``alpha[o] dot + beta[o]``: the weight scale, the bias and the folded
        BatchNorm ``gamma (y - mean) / sqrt(var + eps) + beta`` composed in float64."""
        alpha = self.weight_scale.double()
        beta = torch.zeros_like(alpha) if self.bias is None else self.bias.detach().double()
        bn = self.bn
        if bn is not None:
            scale = (bn.running_var.double() + bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.detach().double()
            alpha, beta = alpha * scale, (beta - bn.running_mean.double()) * scale
            if bn.bias is not None:
                beta = beta + bn.bias.detach().double()
        return alpha, beta

    def _sign_input(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The tensor whose sign the kernel packs and the ``(N, C)`` shift it adds first: the input
        binarizer's ``pre`` done inside the kernel where it is a shift (ReActNet's RSign ``x + b``,
        RBNN's ``x - mean``), else computed here."""
        pre = self.input_binarizer.pre
        n, c = x.shape[:2]
        if isinstance(pre, nn.Identity):
            return x, None
        if isinstance(pre, LearnableBias):
            return x, pre.bias.detach().view(1, c).expand(n, c).contiguous()
        if isinstance(pre, PerSampleCenter):  # x + (-mean) == x - mean exactly
            return x, (-x.mean(dim=tuple(range(1, x.dim())))).view(n, 1).expand(n, c).contiguous()
        return pre(x), None

    def _convolve_packed_torch(self, x: Tensor) -> Tensor:
        """:func:`~cmim_dense.packed.xnor.xnor_conv2d` on the sign of the binarizer's ``pre``, then scale and bias."""
        positive = self.input_binarizer.pre(x) >= 0  # = binary_sign(...) > 0; the sign's forward is binary_sign
        ph, pw = self.padding
        if ph or pw:
            fill = self.pad_value >= 0  # zero padding is computed as +1 padding, then corrected
            positive = F.pad(positive, (pw, pw, ph, ph), value=fill)
        out = xnor_conv2d(positive, self.weight_bits, self.in_channels, self.stride, self.dilation)
        if self.pad_value == 0.0 and (ph or pw):
            out = out - self._zero_padding_correction(x.shape[-2], x.shape[-1])
        out = out * self.weight_scale.view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def _zero_padding_correction(self, height: int, width: int) -> Tensor:
        """:func:`~cmim_dense.packed.xnor.zero_padding_correction`, once per input size and state."""
        corrections = self._corrections.get(self._sources(), dict)
        if (height, width) not in corrections:
            corrections[height, width] = zero_padding_correction(self.binary_weight(), height, width, self.padding,
                                                                 self.stride, self.dilation)
        return corrections[height, width]

    def extra_repr(self) -> str:
        kh, kw = self.kernel_size
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}")
        text += f", groups={self.groups}" if self.groups != 1 else ""
        text += f", pad_value={self.pad_value:g}" if self.pad_value != 0.0 else ""
        text += ", input_scale=True" if self.input_scale else ""
        return text + ", weight=1-bit packed" + (", packed forward" if self.packed else "")


def binary_weight_and_scale(conv: BinaryConv2d) -> tuple[Tensor, Tensor]:
    """Split the weight a binary conv uses in eval mode into +-1 values B and per-channel scales.

    ``W_eff = conv.effective_weight()`` (eval mode, no rotation re-fit) has the form
    ``s_o * B_o`` with one magnitude per output channel for every weight binarizer
    (docs/methods.md); this returns ``B = binary_sign(W_eff)`` and ``s = |W_eff|`` per channel,
    after checking that ``s * B`` reproduces ``W_eff`` exactly.  A negative learned scale
    yields a positive ``s`` with flipped ``B``.
    """
    was_training = conv.training
    conv.eval()
    try:
        with torch.no_grad():
            weight = conv.effective_weight().detach()
    finally:
        conv.train(was_training)
    binary = binary_sign(weight)
    scale = weight.abs().flatten(1).amax(dim=1)
    if not torch.equal(scale.view(-1, 1, 1, 1) * binary, weight):
        raise ValueError("effective weight is not scale * sign with one scale per output channel; cannot pack it")
    return binary, scale
