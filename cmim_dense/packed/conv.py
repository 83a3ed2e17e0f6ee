"""Binary convolutions stored as packed bits, with an optional XNOR-popcount forward.

:class:`PackedBinaryConv2d` replaces a :class:`~cmim_dense.binary.BinaryConv2d` whose weights
are binary.  It keeps everything real-valued the original layer has (its input binarizer,
bias, padding value, XNOR K map) and stores the weight as 1 bit per element plus one
real-valued scale per output channel: ``W_eff[o] = scale[o] * B[o]``, ``B`` in {-1, +1}.

Two forwards compute the same function:

- float (default): the inherited ``BinaryConv2d.forward`` on the unpacked ``scale * B``,
  bit-identical to the training-time layer in eval mode;
- packed (``packed = True``): ``scale[o] * (K - 2 popcount(x XOR w))`` on 64-bit words, followed
  by the same bias and K map; on the compiled kernel (:mod:`.native`) when it can be built, else
  with :func:`xnor_conv2d` in plain PyTorch.  The integer part is exact; the result differs from
  the float forward only by float rounding of the per-channel scaling.

:mod:`.fuse` can fold the BatchNorm that follows a layer into it (:meth:`PackedBinaryConv2d.fold`)
and, where that BatchNorm only feeds another binary conv's sign, make the layer emit packed bits
(:meth:`PackedBinaryConv2d.emit_bits_to`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..binary import BinaryConv2d, LearnableBias, PerSampleCenter, binary_sign
from ..binary.conv import tensor_versions, unchanged
from .native import ConvGeometry, NativeLibrary, PackedBits, native_library, xnor_conv2d_native
from .native.kernel import threshold_epilogue, weight_tiles
from .bits import BYTE_COUNT_SUMS, byte_counts_, bytes_to_words, pack_bits, packed_length, signs_from_bits, sum_bytes_

# Block of the fallback's XNOR-popcount GEMM: 256K outputs (three int64 scratch buffers of 2 MiB),
# above torch's grain size, so its elementwise ops are split across threads (docs/export.md).
_BLOCK = 1 << 18
_BLOCK_POSITIONS = 1 << 14


def pack_weight(binary: Tensor) -> Tensor:
    """+-1 weights ``(C_out, C_in, kh, kw)`` -> uint8 ``(C_out, kh, kw, ceil(C_in / 8))``, packed along C_in."""
    return pack_bits(binary.permute(0, 2, 3, 1) >= 0)


def unpack_weight(bits: Tensor, in_channels: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_weight`: the +-1 weights, shaped ``(C_out, C_in, kh, kw)``."""
    # standard strides (also on size-1 dims): F.conv2d may pick another algorithm, hence another
    # summation order, for a weight whose strides differ from the latent weight's
    return signs_from_bits(bits, in_channels, dtype).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def pack_activation(binary_positive: Tensor) -> Tensor:
    """Bits ``(N, C, H, W)`` (True for +1) -> int64 words ``(N, H, W, ceil(C / 64))``, packed along C."""
    return bytes_to_words(pack_bits(binary_positive.permute(0, 2, 3, 1)))


def im2col_words(words: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """im2col on packed words: ``(N, H, W, C_w)`` -> ``(kh * kw * C_w, N * H_out * W_out)`` and (H_out, W_out).

    Rows are in (i, j, word) order, the order of :func:`pack_weight`'s flattened words.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    n, h, w, _ = words.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    taps = [words[:, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw, :]
            for i in range(kh) for j in range(kw)]
    columns = torch.stack(taps).permute(0, 4, 1, 2, 3).reshape(kh * kw * words.shape[-1], n * ho * wo)
    return columns, (ho, wo)


def xnor_popcount_gemm(columns: Tensor, weights: Tensor) -> Tensor:
    """``mismatches[o, m] = sum_t popcount(columns[t, m] XOR weights[t, o])`` for int64 words.

    ``columns`` is ``(T, M)``, ``weights`` ``(T, C_out)``; returns int64 ``(C_out, M)``.  Works
    in blocks of at most ``_BLOCK`` outputs with three preallocated scratch buffers (no
    allocation in the loop), and adds byte counts of up to 31 words before each horizontal
    sum (the Harley-Seal idea, Hacker's Delight Sec. 5-1).
    """
    t_words, m = columns.shape
    c_out = weights.shape[1]
    block_m = min(m, _BLOCK_POSITIONS)
    block_o = max(1, min(c_out, _BLOCK // block_m))
    out = torch.empty(c_out, m, dtype=torch.int64, device=columns.device)
    scratch = torch.empty(3, block_o, block_m, dtype=torch.int64, device=columns.device)
    for o0 in range(0, c_out, block_o):
        for m0 in range(0, m, block_m):
            o1, m1 = min(o0 + block_o, c_out), min(m0 + block_m, m)
            x, tmp, counts = (buffer[: o1 - o0, : m1 - m0] for buffer in scratch)
            total = out[o0:o1, m0:m1]
            for start in range(0, t_words, BYTE_COUNT_SUMS):
                stop = min(start + BYTE_COUNT_SUMS, t_words)
                for t in range(start, stop):
                    torch.bitwise_xor(weights[t, o0:o1, None], columns[t, None, m0:m1], out=x)
                    byte_counts_(x, tmp)
                    if t == start:
                        counts.copy_(x)
                    else:
                        counts.add_(x)
                sum_bytes_(counts, tmp)
                if start == 0:
                    total.copy_(counts)
                else:
                    total.add_(counts)
    return out


def xnor_conv2d(x_positive: Tensor, weight_bits: Tensor, in_channels: int, stride: tuple[int, int],
                dilation: tuple[int, int]) -> Tensor:
    """Integer binary convolution ``sum_k x_k w_k`` of +-1 tensors from packed bits, no padding.

    ``x_positive`` is the (already padded) binary input as booleans (True = +1), shaped
    ``(N, C_in, H, W)``; ``weight_bits`` comes from :func:`pack_weight`.  Each output is
    ``K - 2 popcount(x XOR w)`` summed over the 64-bit words of every tap, K = C_in kh kw
    (XNOR-Net Sec. 3.2).  Returns float32 ``(N, C_out, H_out, W_out)``; exact while K < 2^24.
    """
    c_out, kh, kw, _ = weight_bits.shape
    columns, (ho, wo) = im2col_words(pack_activation(x_positive), (kh, kw), stride, dilation)
    weights = bytes_to_words(weight_bits).reshape(c_out, -1).T.contiguous()
    mismatches = xnor_popcount_gemm(columns, weights)
    dot = (in_channels * kh * kw - 2 * mismatches).view(c_out, x_positive.shape[0], ho, wo)
    return dot.transpose(0, 1).to(torch.float32, memory_format=torch.contiguous_format)


def runs_packed(conv: BinaryConv2d) -> bool:
    """Whether ``conv``, packed, can run the XNOR-popcount forward: binary weights, binary inputs, one group."""
    return conv.binary_weights and conv.binary_inputs and conv.groups == 1


class PackedBinaryConv2d(BinaryConv2d):
    """A :class:`BinaryConv2d` whose weight is 1 bit per element plus a per-channel scale.

    State: ``weight_bits`` (uint8, ``(C_out, kh, kw, ceil(C_in / 8))``, see :func:`pack_weight`),
    ``weight_scale`` (float, ``(C_out,)``), the optional ``bias`` and the input binarizer's
    parameters.  There is no latent ``weight`` and no weight binarizer any more.
    """

    def __init__(self, conv: BinaryConv2d, pack: bool = True) -> None:
        """Pack ``conv``'s eval-mode weight; ``pack=False`` leaves zero bits and scales (a skeleton to load into)."""
        if conv.weight_binarizer is None:
            raise ValueError("only a BinaryConv2d with binary weights can be packed")
        with torch.device("meta"):  # the latent weight built here is deleted right away
            super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             conv.dilation, conv.groups, False, pad_value=conv.pad_value,
                             input_scale=conv.input_scale)
        del self.weight
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
        self._packed = False
        self._derived: tuple[list[tuple[Tensor, int]], dict[Any, Any]] = ([], {})
        self._folded: tuple[nn.BatchNorm2d, ...] = ()  # not submodules: the model keeps them where they were
        self._bits_to: tuple[PackedBinaryConv2d, ...] = ()

    @property
    def binary_weights(self) -> bool:
        return True

    @property
    def supports_packed(self) -> bool:
        """The XNOR-popcount forward needs binary inputs and one group (:func:`runs_packed`)."""
        return runs_packed(self)

    @property
    def packed(self) -> bool:
        """Whether forward runs the XNOR-popcount kernel (False: float convolution)."""
        return self._packed

    @packed.setter
    def packed(self, enabled: bool) -> None:
        if enabled and not self.supports_packed:
            raise ValueError("the packed forward needs binary inputs and groups=1")
        self._packed = bool(enabled)

    def binary_weight(self) -> Tensor:
        """The +-1 weights B, ``(C_out, C_in / groups, kh, kw)``."""
        return unpack_weight(self.weight_bits, self.in_channels // self.groups, self.weight_scale.dtype)

    def effective_weight(self) -> Tensor:
        """``scale[o] * B[o]``: the exact tensor the training-time layer used in eval mode."""
        return self.weight_scale.view(-1, 1, 1, 1) * self.binary_weight()

    def forward_weight(self) -> Tensor:
        """:meth:`effective_weight`, unpacked once and reused until the packed state changes."""
        cache = self._derived_cache()
        if "weight" not in cache:
            cache["weight"] = self.effective_weight()
        return cache["weight"]

    @property
    def geometry(self) -> ConvGeometry:
        """Shape parameters for the compiled kernel."""
        return ConvGeometry(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                            self.dilation, self.pad_value)

    @property
    def folded_batchnorm(self) -> nn.BatchNorm2d | None:
        """The BatchNorm this layer applies to its output (:meth:`fold`), if any."""
        return self._folded[0] if self._folded else None

    def fold(self, batchnorm: nn.BatchNorm2d) -> None:
        """Apply ``batchnorm`` (eval mode, running statistics) to this layer's output from now on.

        On the kernel it becomes part of the per-channel epilogue ``alpha * dot + beta``; other
        forwards call it after the convolution.  The caller makes the BatchNorm itself an identity
        (:class:`~cmim_dense.packed.fuse.FoldedBatchNorm2d`).
        """
        if self.input_scale:
            raise ValueError("a layer with XNOR-Net's K map cannot fold the following BatchNorm (K is per pixel)")
        if batchnorm.training or batchnorm.running_mean is None or batchnorm.running_var is None:
            raise ValueError("only an eval-mode BatchNorm with running statistics can be folded")
        self._folded = (batchnorm,)

    def emit_bits_to(self, consumer: PackedBinaryConv2d) -> None:
        """Hand ``consumer`` the packed sign of this layer's (folded) output instead of floats.

        Valid when the folded BatchNorm's output reaches ``consumer`` only through sign-preserving
        steps and ``consumer``'s input binarizer is the plain sign: then sign(alpha dot + beta) is a
        per-channel threshold on the integer dot (:func:`~cmim_dense.packed.native.kernel.threshold_epilogue`).
        Used only when both layers run on the kernel; otherwise the float output is returned.
        """
        if self.folded_batchnorm is None:
            raise ValueError("fold the following BatchNorm first: the bits are the sign of its output")
        if not consumer.takes_bits:
            raise ValueError("the consumer must binarize its input with a plain sign and have no K map")
        self._bits_to = (consumer,)

    @property
    def takes_bits(self) -> bool:
        """Whether this layer's input can arrive as packed bits: a plain sign(x) input, one group, no K map."""
        return (self.supports_packed and isinstance(self.input_binarizer.pre, nn.Identity)
                and not self.input_binarizer.rescales and not self.input_scale)

    def _derived_cache(self) -> dict[Any, Any]:
        """Tensors derived from the weights, bias and folded BatchNorm; emptied when any is replaced or modified."""
        sources = [self.weight_bits, self.weight_scale, *([] if self.bias is None else [self.bias])]
        if self._folded:
            bn = self._folded[0]
            sources += [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]
        held, cache = self._derived
        if not unchanged(held, sources):
            self._derived = held, cache = tensor_versions(sources), {}
        return cache

    def forward(self, x: Tensor | PackedBits) -> Tensor | PackedBits:
        if self.packed:
            native = native_library()
            kernel_input = isinstance(x, PackedBits) or (x.dtype == torch.float32 and x.device.type == "cpu")
            if native is not None and kernel_input:
                return self._forward_native(x, native)
            out = self._forward_packed_torch(x)
        else:
            out = super().forward(x)
        bn = self.folded_batchnorm
        if bn is None:
            return out
        return F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def _forward_native(self, x: Tensor | PackedBits, native: NativeLibrary) -> Tensor | PackedBits:
        """The compiled kernel: sign + packing, XNOR-popcount, padding correction, scale/bias/BN or bits."""
        cache = self._derived_cache()
        if "tiles" not in cache:
            cache["tiles"] = weight_tiles(self.weight_bits)
            cache["tap_sums"] = (self.binary_weight().sum(dim=1).flatten(1).to(torch.int32).contiguous()
                                 if self.pad_value == 0.0 and any(self.padding) else None)
            cache["affine"] = self._epilogue()
            cache["affine32"] = tuple(t.float().contiguous() for t in cache["affine"])
        bits = None
        if self._bits_to and self._bits_to[0].packed:
            if "thresholds" not in cache:
                taps = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
                cache["thresholds"] = threshold_epilogue(*cache["affine"], taps)
            bits = (*cache["thresholds"], self._bits_to[0].geometry)
        packed_input, shift = x, None
        if not isinstance(x, PackedBits):
            packed_input, shift = self._sign_input(x)
        out = xnor_conv2d_native(native, packed_input, self.geometry, cache["tiles"], *cache["affine32"],
                                 tap_sums=cache["tap_sums"], shift=shift, bits=bits)
        if self.input_scale:
            assert not isinstance(x, PackedBits) and not isinstance(out, PackedBits)
            out = out * self._xnor_k_map(x)
        return out

    def _epilogue(self) -> tuple[Tensor, Tensor]:
        """``(alpha, beta)`` of ``alpha[o] dot + beta[o]``: the weight scale, the bias and the folded
        BatchNorm ``gamma (y - mean) / sqrt(var + eps) + beta`` composed in float64."""
        alpha = self.weight_scale.double()
        beta = torch.zeros_like(alpha) if self.bias is None else self.bias.detach().double()
        bn = self.folded_batchnorm
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
        assert self.input_binarizer is not None
        pre = self.input_binarizer.pre
        n, c = x.shape[:2]
        if isinstance(pre, nn.Identity):
            return x, None
        if isinstance(pre, LearnableBias):
            return x, pre.bias.detach().view(1, c).expand(n, c).contiguous()
        if isinstance(pre, PerSampleCenter):  # x + (-mean) == x - mean exactly
            return x, (-x.mean(dim=tuple(range(1, x.dim())))).view(n, 1).expand(n, c).contiguous()
        return pre(x), None

    def _forward_packed_torch(self, x: Tensor) -> Tensor:
        """The pure-PyTorch packed forward (:func:`xnor_conv2d`): the fallback where the kernel is unavailable."""
        assert self.input_binarizer is not None
        positive = self.input_binarizer.pre(x) >= 0  # = binary_sign(...) > 0; the sign's forward is binary_sign
        ph, pw = self.padding
        if ph or pw:
            fill = self.pad_value >= 0  # zero padding is computed as +1 padding, then corrected
            positive = F.pad(positive, (pw, pw, ph, ph), value=fill)
        out = xnor_conv2d(positive, self.weight_bits, self.in_channels, self.stride, self.dilation)
        if self.pad_value == 0.0 and (ph or pw):
            out = out - self._zero_padding_correction(x.shape[-2], x.shape[-1], x.device)
        out = out * self.weight_scale.view(1, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        if self.input_scale:
            out = out * self._xnor_k_map(x)
        return out

    def _zero_padding_correction(self, h: int, w: int, device: torch.device) -> Tensor:
        """What +1 padding adds over zero padding: the sum of the weights on padded taps.

        ``corr[o, p] = sum over taps t of output p that fall on padding of sum_c B[o, c, t]``,
        computed once per input size as a convolution of the padding indicator with the
        channel sums of B (the same correction as LCE's zero-padding kernel).
        """
        cache = self._derived_cache()
        key = ("correction", h, w, device)
        if key not in cache:
            ph, pw = self.padding
            indicator = F.pad(torch.zeros(1, 1, h, w, device=device), (pw, pw, ph, ph), value=1.0)
            channel_sums = self.binary_weight().sum(dim=1, keepdim=True)
            cache[key] = F.conv2d(indicator, channel_sums, None, self.stride, 0, self.dilation)
        return cache[key]

    def extra_repr(self) -> str:
        return super().extra_repr() + ", weight=1-bit packed" + (", packed forward" if self.packed else "")


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
