"""Bit packing of +-1 tensors and population count, in plain PyTorch.

Convention (docs/export.md): a binary value v in {-1, +1} is stored as the bit ``v >= 0``
(1 for +1, 0 for -1; the same test as :func:`~cmim_dense.binary.binary_sign`, so sign(0) = +1).
Bits are packed along the *last* dimension, least significant bit first: element ``8 b + j``
of that dimension is bit ``j`` of byte ``b``.  A last dimension that is not a multiple of 8
is padded with 0 bits.  For the XNOR-popcount kernel the bytes are reinterpreted as 64-bit
words (:func:`bytes_to_words`); padding bits are 0 on both operands, so they never count.

For two packed +-1 vectors of length K, the dot product is ``K - 2 popcount(a XOR b)``
(XNOR-Net, Rastegari et al. 2016, Sec. 3.2): a position contributes +1 when the bits agree
and -1 when they differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# SWAR masks (Hacker's Delight, Sec. 5-1): 2-, 4- and 8-bit lanes, then 16-, 32- and 64-bit lanes.
_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_M8 = 0x00FF00FF00FF00FF
_M16 = 0x0000FFFF0000FFFF
_M32 = 0x00000000FFFFFFFF
BYTE_COUNT_SUMS = 31  # byte counts (<= 8 each) of up to 31 words can be added before a byte overflows


def packed_length(count: int) -> int:
    """Number of bytes holding ``count`` packed bits."""
    return -(-count // 8)


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a boolean tensor along its last dimension into uint8, LSB first.

    ``(..., n)`` bool -> ``(..., ceil(n / 8))`` uint8; trailing pad bits are 0.  Byte b is
    ``sum_j bit[8 b + j] << j`` (the bits are disjoint, so the sum is their OR).
    """
    n = bits.shape[-1]
    bits = bits.to(torch.uint8).contiguous()
    if n % 8:
        bits = F.pad(bits, (0, 8 - n % 8))
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    return (bits.unflatten(-1, (-1, 8)) << shifts).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``(..., nbytes)`` uint8 -> ``(..., count)`` bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = ((packed.unsqueeze(-1) >> shifts) & 1).bool()
    return bits.flatten(-2)[..., :count]


def signs_from_bits(packed: Tensor, count: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The +-1 values a packed tensor encodes (bit 1 -> +1, bit 0 -> -1)."""
    return unpack_bits(packed, count).to(dtype) * 2 - 1


def bytes_to_words(packed: Tensor) -> Tensor:
    """Reinterpret packed bytes as int64 words: ``(..., nbytes)`` -> ``(..., ceil(nbytes / 8))``.

    Pads the byte dimension with zero bytes to a multiple of 8, then views the memory as
    int64 (no copy when no padding is needed).  Both operands of a XOR must be converted the
    same way; the bit order inside a word then does not matter for the popcount.
    """
    nbytes = packed.shape[-1]
    if nbytes % 8:
        packed = F.pad(packed, (0, 8 - nbytes % 8))
    return packed.contiguous().view(torch.int64)


def byte_counts_(x: Tensor, tmp: Tensor) -> Tensor:
    """Replace every int64 word of ``x`` by the population counts of its 8 bytes (one count per byte).

    SWAR steps x - ((x >> 1) & M1), (x & M2) + ((x >> 2) & M2), (x + (x >> 4)) & M4.  Masks are
    applied after every arithmetic right shift, so int64 gives the unsigned result.  ``tmp`` is
    scratch space of ``x``'s shape; everything happens in place (no allocation).
    """
    torch.bitwise_right_shift(x, 1, out=tmp).bitwise_and_(_M1)
    x.sub_(tmp)
    torch.bitwise_right_shift(x, 2, out=tmp).bitwise_and_(_M2)
    x.bitwise_and_(_M2).add_(tmp)
    torch.bitwise_right_shift(x, 4, out=tmp)
    return x.add_(tmp).bitwise_and_(_M4)


def sum_bytes_(x: Tensor, tmp: Tensor) -> Tensor:
    """Replace every int64 word of ``x`` by the sum of its 8 unsigned bytes, in place (``tmp``: scratch)."""
    for shift, mask in ((8, _M8), (16, _M16)):
        torch.bitwise_right_shift(x, shift, out=tmp).bitwise_and_(mask)
        x.bitwise_and_(mask).add_(tmp)
    torch.bitwise_right_shift(x, 32, out=tmp)
    return x.bitwise_and_(_M32).add_(tmp)

