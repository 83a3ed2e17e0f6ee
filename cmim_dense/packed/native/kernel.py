"""Python side of the compiled XNOR-popcount convolution: layouts, argument structs, one call per layer.

:func:`xnor_conv2d_native` packs the sign of a float NCHW input into 64-bit words (or takes words
a previous layer wrote, :class:`PackedBits`), computes ``dot = K - 2 popcount(x XOR w)`` per output
(XNOR-Net Sec. 3.2), corrects zero-padded borders, and applies a fused per-channel epilogue:
``alpha[o] * dot + beta[o]`` in float, or the packed bits ``sign[o] * dot >= threshold[o]`` written
straight into the next binary layer's input layout.  The work runs on ``torch.get_num_threads()``
threads of torch's own OpenMP runtime, which the library is linked against (:mod:`.build`).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ..bits import bytes_to_words
from .build import NativeLibrary

ISAS = ("portable", "avx2", "avx512")
ISA_ENV = "CMIM_DENSE_NATIVE_ISA"
_ROW_SLACK = 32  # columns past the last output a tile may read (the widest tile, rounded up)

_LAYOUT_FIELDS = ("batch", "words", "rows", "phases", "row_words", "channels", "height", "width", "pad_h", "pad_w")


class _Geometry(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in _LAYOUT_FIELDS]


class _ConvArgs(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p), ("shift", ctypes.c_void_p), ("fill", ctypes.c_uint64), ("input", ctypes.c_void_p),
        ("in_", _Geometry), ("weight", ctypes.c_void_p), ("tap_sums", ctypes.c_void_p),
        *[(name, ctypes.c_int64) for name in ("out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w",
                                               "dilation_h", "dilation_w", "out_h", "out_w", "bits_out")],
        ("alpha", ctypes.c_void_p), ("beta", ctypes.c_void_p), ("out", ctypes.c_void_p),
        ("sign", ctypes.c_void_p), ("threshold", ctypes.c_void_p), ("out_bits", ctypes.c_void_p),
        ("next", _Geometry), ("isa", ctypes.c_int64), ("threads", ctypes.c_int64),
    ]


@dataclass(frozen=True)
class PackedLayout:
    """Where the bits of a packed activation live: words ``[batch][words][rows][phases][row_words]``.

    One word holds 64 channels of one pixel (bit ``c % 64`` of word ``c // 64``; bits past
    ``channels`` are 0).  Column ``c`` of the padded map is stored at phase ``c % phases``, column
    ``c // phases`` (``phases`` = the reading conv's column stride), so a tile of consecutive output
    columns reads consecutive words for every stride and dilation.  The data region starts at
    ``(pad_h, pad_w)``; everything else holds the padding word.
    """

    batch: int
    words: int
    rows: int
    phases: int
    row_words: int
    channels: int
    height: int
    width: int
    pad_h: int
    pad_w: int

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self.batch, self.words, self.rows, self.phases, self.row_words

    def struct(self) -> _Geometry:
        return _Geometry(*(getattr(self, name) for name in _LAYOUT_FIELDS))


@dataclass(frozen=True)
class PackedBits:
    """A binary activation kept in the bit domain between two binary convolutions (sign(v) as bits)."""

    words: Tensor
    layout: PackedLayout


@dataclass(frozen=True)
class ConvGeometry:
    """The shape parameters of one binary convolution, and the padded words its input must have."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip((height, width), self.kernel, self.stride, self.padding, self.dilation))

    def layout(self, batch: int, height: int, width: int) -> PackedLayout:
        """The packed input layout this convolution reads for a ``(batch, in_channels, height, width)`` input."""
        (ph, pw), sw = self.padding, self.stride[1]
        _, out_w = self.out_size(height, width)
        reach = (self.kernel[1] - 1) * self.dilation[1] // sw
        row_words = max(-(-(width + 2 * pw) // sw), -(-out_w // _ROW_SLACK) * _ROW_SLACK + reach)
        return PackedLayout(batch, -(-self.in_channels // 64), height + 2 * ph, sw, row_words, self.in_channels,
                            height, width, ph, pw)

    @property
    def fill_ones(self) -> bool:
        """Padding words hold +1 bits (pad_value +1, and zero padding, corrected in the epilogue) or -1 bits."""
        return self.pad_value >= 0

    def padding_words(self) -> Tensor:
        """The padding word of each 64-channel word: the +1 bits of its valid channels, or 0."""
        counts = (self.in_channels - 64 * torch.arange(-(-self.in_channels // 64))).clamp(max=64)
        below = torch.bitwise_left_shift(torch.ones_like(counts), counts.clamp(max=63)) - 1
        ones = torch.where(counts == 64, -1, below)
        return ones if self.fill_ones else torch.zeros_like(ones)


def weight_tiles(weight_bits: Tensor) -> Tensor:
    """uint8 ``(C_out, kh, kw, ceil(C_in / 8))`` -> int64 ``(ceil(C_out / 8), kh, kw, words, 8)``.

    The kernel's register tile is 8 output channels: their words for one (tap, word) step are
    adjacent; output channels past C_out are zero words (computed, never stored).
    """
    words = bytes_to_words(weight_bits)
    c_out = words.shape[0]
    groups = -(-c_out // 8)
    padded = torch.zeros((groups * 8, *words.shape[1:]), dtype=torch.int64)
    padded[:c_out] = words
    return padded.view(groups, 8, *words.shape[1:]).permute(0, 2, 3, 4, 1).contiguous()


def threshold_epilogue(alpha: Tensor, beta: Tensor, taps: int) -> tuple[Tensor, Tensor]:
    """``alpha * dot + beta >= 0`` as the integer test ``sign * dot >= threshold`` (int32 each).

    ``alpha > 0``: ``dot >= ceil(-beta / alpha)``; ``alpha < 0`` (a negative BatchNorm scale) flips
    the comparison: ``-dot >= ceil(beta / alpha)``; ``alpha = 0``: the constant ``beta >= 0``.
    Computed in float64; thresholds are clipped to ``[-taps - 1, taps + 1]`` (``|dot| <= taps``).
    """
    alpha, beta = alpha.double(), beta.double()
    sign = torch.sign(alpha)
    bound = torch.where(alpha != 0, -beta / alpha.abs(), torch.where(beta >= 0, 0.0, 1.0))
    threshold = torch.ceil(bound).clamp(-taps - 1, taps + 1)
    return sign.to(torch.int32), threshold.to(torch.int32)


def requested_isa(isa: str | None) -> int:
    """The instruction set asked for (argument, else ``$CMIM_DENSE_NATIVE_ISA``, else the widest); the
    library lowers it to what the CPU has."""
    name = isa or os.environ.get(ISA_ENV) or ISAS[-1]
    if name not in ISAS:
        raise ValueError(f"unknown instruction set {name!r}; valid: {', '.join(ISAS)}")
    return ISAS.index(name)


def cpu_isa(native: NativeLibrary) -> str:
    """The widest kernel this CPU runs: ``avx512`` (VPOPCNTDQ), ``avx2`` or ``portable``."""
    return ISAS[native.lib.xnor_cpu_isa()]


def popcount_rate(native: NativeLibrary, isa: str | None = None, repeats: int = 20_000) -> float:
    """Measured XOR + popcount throughput of the kernel's inner loop, in 64-bit words per second on
    ``torch.get_num_threads()`` threads: 8 words in registers against a 4 KiB L1-resident buffer
    (no other memory traffic), i.e. the ceiling the convolution tiles can approach."""
    return native.lib.xnor_popcount_rate(requested_isa(isa), torch.get_num_threads(), repeats)


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def xnor_conv2d_native(native: NativeLibrary, x: Tensor | PackedBits, geometry: ConvGeometry, tiles: Tensor,
                       alpha: Tensor, beta: Tensor, *, tap_sums: Tensor | None = None, shift: Tensor | None = None,
                       bits: tuple[Tensor, Tensor, ConvGeometry] | None = None,
                       isa: str | None = None) -> Tensor | PackedBits:
    """One binary convolution on the kernel.

    ``x``: float32 NCHW (its sign, ``x + shift >= 0`` with ``shift`` ``(N, C_in)``, is packed inside
    the call) or :class:`PackedBits` laid out by :meth:`ConvGeometry.layout`.  ``tiles`` from
    :func:`weight_tiles`; ``tap_sums`` ``(C_out, kh * kw)`` int32 for zero padding (None for
    +-1 padding).  Returns float32 ``alpha[o] * dot + beta[o]``, ``(N, C_out, H_out, W_out)``, or with
    ``bits = (sign, threshold, next_geometry)`` the packed ``sign * dot >= threshold`` in the layout
    the next convolution reads.
    """
    if isinstance(x, PackedBits):
        layout, words, dense = x.layout, x.words, None
    else:
        dense = x.contiguous()
        layout = geometry.layout(dense.shape[0], dense.shape[2], dense.shape[3])
        words = torch.empty(layout.shape, dtype=torch.int64)
    out_h, out_w = geometry.out_size(layout.height, layout.width)
    args = _ConvArgs(
        x=_pointer(dense), shift=_pointer(shift), fill=(1 << 64) - 1 if geometry.fill_ones else 0,
        input=words.data_ptr(), in_=layout.struct(), weight=tiles.data_ptr(), tap_sums=_pointer(tap_sums),
        out_channels=geometry.out_channels, kernel_h=geometry.kernel[0], kernel_w=geometry.kernel[1],
        stride_h=geometry.stride[0], stride_w=geometry.stride[1], dilation_h=geometry.dilation[0],
        dilation_w=geometry.dilation[1], out_h=out_h, out_w=out_w, alpha=alpha.data_ptr(), beta=beta.data_ptr(),
        isa=requested_isa(isa), threads=torch.get_num_threads())
    if bits is None:
        out = torch.empty(layout.batch, geometry.out_channels, out_h, out_w)
        args.out = out.data_ptr()
        result: Tensor | PackedBits = out
    else:
        sign, threshold, following = bits
        next_layout = following.layout(layout.batch, out_h, out_w)
        fill = following.padding_words().view(1, -1, 1, 1, 1).expand(next_layout.shape).contiguous()
        args.bits_out, args.sign, args.threshold = 1, sign.data_ptr(), threshold.data_ptr()
        args.out_bits, args.next = fill.data_ptr(), next_layout.struct()
        result = PackedBits(fill, next_layout)
    if native.lib.xnor_conv2d(ctypes.byref(args)) < 0:
        raise MemoryError("xnor_conv2d: out of memory")
    return result
