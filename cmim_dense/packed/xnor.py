"""The XNOR-popcount convolution in plain PyTorch: packed weights and activations, im2col on 64-bit words
and a blocked XNOR-popcount GEMM.  The reference the compiled kernel (:mod:`.native`) is tested against,
and the packed forward where the kernel cannot be built."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .bits import BYTE_COUNT_SUMS, byte_counts_, bytes_to_words, pack_bits, signs_from_bits, sum_bytes_

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


def zero_padding_correction(binary_weight: Tensor, height: int, width: int, padding: tuple[int, int],
                            stride: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """What +1 padding adds over zero padding to each output: the sum of the weights on padded taps.

    ``corr[o, p] = sum over taps t of output p that fall on padding of sum_c B[o, c, t]``: a convolution
    of the padding indicator with the channel sums of B (the correction of LCE's zero-padding kernel).
    """
    ph, pw = padding
    indicator = F.pad(binary_weight.new_zeros(1, 1, height, width), (pw, pw, ph, ph), value=1.0)
    return F.conv2d(indicator, binary_weight.sum(dim=1, keepdim=True), None, stride, 0, dilation)
