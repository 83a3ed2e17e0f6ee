"""The frozen dense model's whole inference cost: packed binary backbone + full-precision head, per head,
and the fully binary dense model (a binary head too, dense/binary_head.py).

    python bench/dense_latency.py [--method bireal] [--size 480x640] [--repeats 9] [--threads 2]
                                  [--check-draws 8] [--seed 0] [--json FILE]

For each head configuration (the paper's DeepLabV3 at output stride 8 and 256 wide, DeepLabV3+ at
16 and 256 wide, the slim DeepLabV3+ at 16 and 64 wide that the built-in rooms use, FPN 64 wide),
once with a full-precision head and once with its 3x3 convs binarized by the ``--method`` recipe
(rows with ``"binary_head": true``), at one image of ``--size``, in one run on one machine:
``--repeats`` rounds after a warm-up, each timing one call of each model below in turn
(:func:`common.interleaved_calls`), times the median over rounds:

- ``fp32``: the same head configuration in full precision over a full-precision ResNet-18 (oneDNN
  convolutions): the dense model the binary one replaces;
- ``packed``: over the ``--method`` backbone with every binary convolution on the XNOR-popcount
  path (the native kernel when it builds, with fused BatchNorm epilogues, as an exported model
  runs), split into the backbone (the encoder alone) and the head (the rest), and checked
  against the same model in float on ``--check-draws`` random 64x64 images (``agreeing_draws``
  and each draw's max abs difference, :func:`common.packed_check`; random backbone weights and
  statistics, which timing does not depend on; ``--seed`` fixes them and the inputs);

with each model's operations (OPs = BOPs / 64 + FLOPs, docs/accounting.md).  Speed-ups are
fp32 time / packed time of the same round (above 1 = the binary model is faster): the median over
rounds and, in ``*_range``, the lowest and highest round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import interleaved_calls, packed_check, write_record  # noqa: E402

from cmim_dense.arguments import image_size  # noqa: E402
from cmim_dense.dense import create_dense_model  # noqa: E402
from cmim_dense.model_summary import dense_parts  # noqa: E402
from cmim_dense.packed import packed_inference_copy  # noqa: E402

# (head, output stride, width): the paper's default, a wider V3+, the built-in rooms' slim V3+, FPN
HEAD_CONFIGS = (("deeplabv3", 8, 256), ("deeplabv3plus", 16, 256), ("deeplabv3plus", 16, 64), ("fpn", 32, 64))


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random latent weights and BatchNorm statistics in the encoder (some scales negative), and random
    BatchNorm means and shifts in the head, so that the packed model's check against its float self sees
    mixed signs, not an initialisation's: a fresh BatchNorm (mean 0, shift 0) after a binary conv gives
    exactly 0 wherever the integer dot is 0, where the float path sums its +-scale terms to about 1e-8
    of either sign, a tie for the next sign that a trained model does not have."""
    with torch.no_grad():
        for parameter in model.encoder.parameters():
            parameter.normal_(0.0, 0.1)
        for module in model.encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.005, 0.02)
        for module in model.decoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.bias.normal_(0.0, 0.1)
    return model


def bench_head(method: str, head: str, stride: int, width: int, size: tuple[int, int], repeats: int,
               check_draws: int, binary_head: bool = False) -> dict:
    x = torch.randn(1, 3, *size)
    head_method = method if binary_head else None
    fp = create_dense_model("resnet18", "fp", 40, head, stride, width).eval()
    binary = randomize(create_dense_model("resnet18", method, 40, head, stride, width,
                                                   binary_head=head_method).eval())
    packed = packed_inference_copy(binary)
    parts = dense_parts(method, "resnet18", head, stride, size, 40, width, binary_head=head_method)
    with torch.no_grad():
        rounds = interleaved_calls({"fp32": lambda: fp(x), "packed": lambda: packed(x),
                                    "fp32_backbone": lambda: fp.encoder(x),
                                    "packed_backbone": lambda: packed.encoder(x)}, repeats)
        row = {"head": head, "output_stride": stride, "width": width, "binary_head": binary_head,
               **packed_check(packed, binary, check_draws),
               **{f"{name}_ms": 1e3 * statistics.median(seconds) for name, seconds in rounds.items()},
               "round_ms": {name: [1e3 * second for second in seconds] for name, seconds in rounds.items()},
               "backbone_gops": parts["backbone"].ops / 1e9, "head_gops": parts["head"].ops / 1e9}
    row["fp32_head_ms"] = row["fp32_ms"] - row["fp32_backbone_ms"]
    row["packed_head_ms"] = row["packed_ms"] - row["packed_backbone_ms"]
    for name, prefix in (("speedup", ""), ("backbone_speedup", "_backbone")):
        ratios = [fp32 / packed_ for fp32, packed_ in zip(rounds[f"fp32{prefix}"], rounds[f"packed{prefix}"])]
        row[name], row[f"{name}_range"] = statistics.median(ratios), [min(ratios), max(ratios)]
    return row


def speedup(row: dict, name: str) -> str:
    low, high = row[f"{name}_range"]
    return f"{row[name]:.2f}x ({low:.2f}-{high:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="bireal", help="the binary backbone's method (default bireal)")
    parser.add_argument("--size", type=image_size, default=(480, 640), help="input HxW (default 480x640)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--check-draws", type=int, default=8, help="random images for the packed-vs-float check")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random weights and images (default 0)")
    parser.add_argument("--json", default="runs/bench/dense_latency.json", help="where to write the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rows = [bench_head(args.method, *config, args.size, args.repeats, args.check_draws, binary_head)
            for binary_head in (False, True) for config in HEAD_CONFIGS]
    print(f"{'head':>24} {'GOPs bb+head':>13} {'fp32 ms':>9} {'packed ms':>10} {'(backbone':>10} {'head)':>7} "
          f"{'speedup (range)':>19} {'backbone speedup':>22} {'agree':>6}")
    for r in rows:
        name = f"{r['head']} os{r['output_stride']} w{r['width']}{' binary' if r['binary_head'] else ''}"
        print(f"{name:>24} {r['backbone_gops']:>5.2f}+{r['head_gops']:<6.2f} {r['fp32_ms']:>9.1f} "
              f"{r['packed_ms']:>10.1f} "
              f"{r['packed_backbone_ms']:>10.1f} {r['packed_head_ms']:>7.1f} {speedup(r, 'speedup'):>19} "
              f"{speedup(r, 'backbone_speedup'):>22} {r['agreeing_draws']:>3}/{len(r['max_abs_differences'])}")
    print(f"1x3x{args.size[0]}x{args.size[1]}, {args.method} backbone (and, 'binary', head) packed vs the FP32 "
          f"dense model, medians of "
          f"{args.repeats} rounds (speed-up range: lowest and highest round); speedup > 1 = the binary dense model "
          f"is faster; agree = random 64x64 images on which packed and float outputs agree to "
          f"{rows[0]['tolerance']:g} (a sign tie explains a rare miss)")
    write_record(args.json, {"method": args.method, "size": list(args.size), "repeats": args.repeats,
                             "seed": args.seed, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
