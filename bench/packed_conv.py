"""Packed XNOR-popcount binary convolution vs FP32 ``F.conv2d`` at ResNet-18 layer shapes.

    python bench/packed_conv.py [--batch 1 8] [--repeats 5] [--threads N] [--json runs/bench/packed_conv.json]

For every 3x3 stride-1 convolution shape of ResNet-18 (64 ch at 56x56 ... 512 ch at 7x7) and
batch size, all in one run on the same machine, it times (best of ``--repeats`` after one
warm-up call):

- ``fp32``: ``F.conv2d`` on float input and float weights (oneDNN), the reference;
- ``binary float``: the training-time ``BinaryConv2d`` in eval mode (sign, then float conv);
- ``packed``: ``PackedBinaryConv2d`` with the XNOR-popcount forward (sign, bit packing,
  im2col on words, XOR + popcount, zero-padding correction, scaling), split into its
  ``pack+im2col`` and ``xnor-popcount`` stages.

and checks that the packed output matches the float one.  It then times whole networks at
1x3x224x224: FP32 ResNet-18, Bi-Real-18 in float, and Bi-Real-18 with packed convolutions.
Ratios are times relative to fp32 (above 1 = slower).  The tables go to stdout, all numbers
and the machine to ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_seconds, write_record  # noqa: E402

from cmim_dense import create_model  # noqa: E402
from cmim_dense.binary import BinaryConv2d, Spec  # noqa: E402
from cmim_dense.export import pack_model, set_packed  # noqa: E402
from cmim_dense.export.pack import bytes_to_words  # noqa: E402
from cmim_dense.export.packed import (PackedBinaryConv2d, im2col_words, pack_activation,  # noqa: E402
                                      xnor_popcount_gemm)

# (channels, spatial size) of ResNet-18's 3x3 stride-1 convolutions at 224x224 input
SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))


def bench_shape(channels: int, size: int, batch: int, repeats: int) -> dict[str, float]:
    conv = BinaryConv2d(channels, channels, 3, padding=1, input_binarizer=Spec("sign", estimator=Spec("ste_clip")),
                        weight_binarizer=Spec("scaled_sign", estimator=Spec("ste_clip"))).eval()
    packed = PackedBinaryConv2d(conv).eval()
    packed.packed = True
    x = torch.randn(batch, channels, size, size)
    weight = torch.randn(channels, channels, 3, 3)
    positive = F.pad(x >= 0, (1, 1, 1, 1), value=True)
    columns, _ = im2col_words(pack_activation(positive), (3, 3), (1, 1), (1, 1))
    words = bytes_to_words(packed.weight_bits).reshape(channels, -1).T.contiguous()
    with torch.no_grad():
        difference = (packed(x) - conv(x)).abs().max().item()
        fp32 = best_seconds(lambda: F.conv2d(x, weight, None, 1, 1), repeats)
        row = {
            "channels": channels, "size": size, "batch": batch,
            "fp32_ms": 1e3 * fp32,
            "binary_float_ms": 1e3 * best_seconds(lambda: conv(x), repeats),
            "packed_ms": 1e3 * best_seconds(lambda: packed(x), repeats),
            "pack_im2col_ms": 1e3 * best_seconds(
                lambda: im2col_words(pack_activation(F.pad(x >= 0, (1, 1, 1, 1), value=True)), (3, 3), (1, 1), (1, 1)),
                repeats),
            "xnor_popcount_ms": 1e3 * best_seconds(lambda: xnor_popcount_gemm(columns, words), repeats),
            "max_abs_difference": difference,
            "weight_bytes_fp32": weight.numel() * 4,
            "weight_bytes_packed": packed.weight_bits.numel() + packed.weight_scale.numel() * 4,
        }
    row["packed_vs_fp32"] = row["packed_ms"] / row["fp32_ms"]
    row["xnor_popcount_vs_fp32"] = row["xnor_popcount_ms"] / row["fp32_ms"]
    return row


def bench_networks(repeats: int) -> dict[str, float]:
    """FP32 ResNet-18 against Bi-Real-18 (float simulation and packed convolutions), 1x3x224x224."""
    fp = create_model("resnet18", "fp").eval()
    binary = create_model("resnet18", "bireal").eval()
    packed = create_model("resnet18", "bireal").eval()
    packed.load_state_dict(binary.state_dict())
    pack_model(packed)
    set_packed(packed)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        row = {"fp32_resnet18_ms": 1e3 * best_seconds(lambda: fp(x), repeats),
               "bireal_float_ms": 1e3 * best_seconds(lambda: binary(x), repeats),
               "bireal_packed_ms": 1e3 * best_seconds(lambda: packed(x), repeats),
               "max_abs_difference": (packed(x) - binary(x)).abs().max().item()}
    row["packed_vs_fp32"] = row["bireal_packed_ms"] / row["fp32_resnet18_ms"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", default="runs/bench/packed_conv.json", help="where to write the results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench_shape(c, s, b, args.repeats) for b in args.batch for c, s in SHAPES]
    header = (f"{'layer':>12} {'N':>2} {'fp32':>8} {'bin float':>9} {'packed':>8} {'pack+im2col':>11} "
              f"{'xnor-pop':>8} {'packed/fp32':>11} {'xnor-pop/fp32':>13} {'max |diff|':>10}")
    print(header)
    for r in rows:
        print(f"{r['channels']:>4}x{r['size']:>2}x{r['size']:<2}   {r['batch']:>2} {r['fp32_ms']:>8.2f} "
              f"{r['binary_float_ms']:>9.2f} {r['packed_ms']:>8.2f} {r['pack_im2col_ms']:>11.2f} "
              f"{r['xnor_popcount_ms']:>8.2f} {r['packed_vs_fp32']:>10.1f}x {r['xnor_popcount_vs_fp32']:>12.1f}x "
              f"{r['max_abs_difference']:>10.1e}")
    print("times in ms, best of", args.repeats, "; ratios > 1 mean slower than fp32")
    net = bench_networks(args.repeats)
    print(f"\nwhole network, 1x3x224x224: FP32 ResNet-18 {net['fp32_resnet18_ms']:.1f} ms, Bi-Real-18 float "
          f"{net['bireal_float_ms']:.1f} ms, Bi-Real-18 packed {net['bireal_packed_ms']:.1f} ms "
          f"({net['packed_vs_fp32']:.1f}x fp32; max |diff| {net['max_abs_difference']:.1e})")
    write_record(args.json, {"repeats": args.repeats, "rows": rows, "network": net})
    return 0


if __name__ == "__main__":
    sys.exit(main())
