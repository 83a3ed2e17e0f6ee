"""Packed XNOR-popcount binary convolution vs FP32 ``F.conv2d`` at ResNet-18's shapes, and whole networks.

    python bench/packed_conv.py [--batch 1 8] [--repeats 7] [--threads 2] [--check-draws 8] [--seed 0]
                                [--busy N] [--json runs/bench/packed_conv.json]

Every 3x3 binary convolution shape of ResNet-18 at 224x224 (the stride-1 convs at 64x56x56 ...
512x7x7 and the stride-2 first convs of stages 2-4), per batch size, all in one run on the same
machine, best of ``--repeats`` after one warm-up call:

- ``fp32``: ``F.conv2d`` on float input and weights (oneDNN), the reference;
- ``packed``: the whole ``PackedBinaryConv2d`` forward on the compiled kernel (sign + packing,
  XNOR-popcount, zero-padding correction, scaling), at the widest instruction set of the CPU, and
  ``packed avx2`` forced to the AVX2 kernel where the CPU has AVX-512;
- ``fallback``: the pure-PyTorch packed path used where the kernel cannot be built (``--no-fallback``
  skips it);

with the binary throughput ``2 K outputs / time`` (K = 9 C_in) against the measured popcount peak
(:func:`~cmim_dense.packed.native.kernel.popcount_rate`, 128 binary operations per 64-bit word), and
checks the packed output against the float one.  Then whole networks at 1x3x``--image-size``:
FP32 ResNet-18, Bi-Real-18 in float, Bi-Real-18 packed + fused on the kernel (and on the fallback),
with where the packed network's time goes, and the packed network checked against its float self on
``--check-draws`` random 64x64 images (:func:`common.packed_check`).  Also the kernel's build time (a
fresh build into a temporary cache).  ``--seed`` fixes every random draw.  Tables go to stdout, all
numbers and the machine to ``--json``.  ``--busy N`` runs the whole measurement beside N processes
that each keep one core busy (a shared server, a CI machine running tests), recorded in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_seconds, packed_check, write_record

from cmim_dense import create_model
from cmim_dense.binary import BinaryConv2d, Spec
from cmim_dense.export import PackedBinaryConv2d, fuse_epilogues, pack_model, set_packed
from cmim_dense.packed.native import cpu_isa, native_library
from cmim_dense.packed.native.build import build_library
from cmim_dense.packed.native.kernel import ISA_ENV, popcount_rate

# (C_in, C_out, input size, stride) of ResNet-18's 3x3 convolutions at 224x224 input
SHAPES = ((64, 64, 56, 1), (128, 128, 28, 1), (256, 256, 14, 1), (512, 512, 7, 1),
          (64, 128, 56, 2), (128, 256, 28, 2), (256, 512, 14, 2))
OPS_PER_WORD = 128  # one 64-bit XOR + popcount = 64 multiply-adds = 128 operations


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes that each spin on one core for the duration of a block."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if spinners else 0)  # let them start spinning
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of a block (the kernel reads its switches per call)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def bench_shape(cin: int, cout: int, size: int, stride: int, batch: int, repeats: int, fallback: bool,
                peak_gops: float, avx2: bool) -> dict[str, object]:
    conv = BinaryConv2d(cin, cout, 3, stride, padding=1, input_binarizer=Spec("sign", estimator=Spec("ste_clip")),
                        weight_binarizer=Spec("scaled_sign", estimator=Spec("ste_clip"))).eval()
    packed = PackedBinaryConv2d(conv).eval()
    packed.packed = True
    x = torch.randn(batch, cin, size, size)
    weight = torch.randn(cout, cin, 3, 3)
    out_size = (size - 1) // stride + 1
    row: dict[str, object] = {"shape": f"{cin}x{size}x{size}" + (f" -> {cout} /{stride}" if stride > 1 else ""),
                              "in_channels": cin, "out_channels": cout, "size": size, "stride": stride,
                              "batch": batch}
    with torch.no_grad():
        row["max_abs_difference"] = (packed(x) - conv(x)).abs().max().item()
        row["fp32_ms"] = 1e3 * best_seconds(lambda: F.conv2d(x, weight, None, stride, 1), repeats)
        row["packed_ms"] = 1e3 * best_seconds(lambda: packed(x), repeats)
        if avx2:
            with environment(ISA_ENV, "avx2"):
                row["packed_avx2_ms"] = 1e3 * best_seconds(lambda: packed(x), repeats)
        if fallback:
            with environment("CMIM_DENSE_NATIVE", "0"):
                row["fallback_ms"] = 1e3 * best_seconds(lambda: packed(x), repeats)
    binary_ops = 2 * 9 * cin * batch * cout * out_size**2
    row["speedup"] = row["fp32_ms"] / row["packed_ms"]
    row["gops"] = binary_ops / (row["packed_ms"] * 1e6)
    row["fp32_gflops"] = binary_ops / (row["fp32_ms"] * 1e6)
    row["peak_fraction"] = row["gops"] / peak_gops
    return row


def time_categories(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms per forward of each part of a packed ResNet (forward hooks), the rest as ``other``."""
    groups = {"binary convs": [m for m in model.modules() if isinstance(m, PackedBinaryConv2d)],
              "stem (7x7 conv, BN, act, max-pool)": [model.conv1, model.bn1, model.act, model.maxpool],
              "shortcuts (avg-pool, 1x1 conv, BN)": [m for n, m in model.named_modules() if n.endswith("downsample")],
              "head (pool, fc)": [model.avgpool, model.head_norm, model.fc]}
    spent = {name: 0.0 for name in groups}
    handles, starts = [], {}
    for name, modules in groups.items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(lambda m, a: starts.__setitem__(m, time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda m, a, o, name=name: spent.__setitem__(name, spent[name] + time.perf_counter() - starts[m])))
    samples: dict[str, list[float]] = {name: [] for name in [*groups, "other (adds, activations, Python)"]}
    try:
        for _ in range(repeats + 1):
            spent.update({name: 0.0 for name in groups})
            start = time.perf_counter()
            model(x)
            total = time.perf_counter() - start
            for name in groups:
                samples[name].append(1e3 * spent[name])
            samples["other (adds, activations, Python)"].append(1e3 * (total - sum(spent.values())))
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values[1:]) for name, values in samples.items()}


def bench_networks(size: int, repeats: int, fallback: bool, check_draws: int) -> dict[str, object]:
    """FP32 ResNet-18 against Bi-Real-18 (float, and packed + fused on the kernel / the fallback)."""
    fp = create_model("resnet18", "fp").eval()
    binary = create_model("resnet18", "bireal").eval()
    packed = create_model("resnet18", "bireal").eval()
    packed.load_state_dict(binary.state_dict())
    pack_model(packed)
    set_packed(packed)
    fuse_epilogues(packed)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        row: dict[str, object] = {
            "input": [1, 3, size, size],
            "fp32_ms": 1e3 * best_seconds(lambda: fp(x), repeats),
            "binary_float_ms": 1e3 * best_seconds(lambda: binary(x), repeats),
            "packed_ms": 1e3 * best_seconds(lambda: packed(x), repeats),
            **packed_check(packed, binary, check_draws),
            "packed_breakdown_ms": time_categories(packed, x, repeats),
        }
        if fallback:
            with environment("CMIM_DENSE_NATIVE", "0"):
                row["fallback_ms"] = 1e3 * best_seconds(lambda: packed(x), repeats)
    row["speedup"] = row["fp32_ms"] / row["packed_ms"]
    return row


def build_seconds() -> float:
    """Wall time of a fresh build of the kernel (into a temporary cache directory)."""
    with tempfile.TemporaryDirectory() as directory:
        built = build_library(Path(directory))
    assert built.build_seconds is not None
    return built.build_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch and kernel threads (default: 2)")
    parser.add_argument("--image-size", type=int, default=224, help="whole-network input size")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="skip timing the pure-PyTorch fallback (slow)")
    parser.add_argument("--check-draws", type=int, default=8,
                        help="random 64x64 images for the whole network's packed-vs-float check")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random weights and inputs (default 0)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="measure beside N processes that each keep one core busy (default 0)")
    parser.add_argument("--json", default="runs/bench/packed_conv.json", help="where to write the results")
    args = parser.parse_args(argv)
    with busy_processes(args.busy):
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    """Every measurement of the bench, its tables printed and its record written (see the module docstring)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    native = native_library()
    if native is None:
        print("the native kernel is unavailable (see the warning above); nothing to benchmark", file=sys.stderr)
        return 1
    isa = cpu_isa(native)
    peak = {name: popcount_rate(native, name) * OPS_PER_WORD / 1e9 for name in ("avx2", isa)}
    print(f"kernel: {isa}, {args.threads} threads; measured XOR+popcount peak {peak[isa]:,.0f} binary GOPS"
          + (f" (AVX2: {peak['avx2']:,.0f})" if isa == "avx512" else "")
          + (f"; beside {args.busy} busy process(es)" if args.busy else ""))
    layers = [bench_shape(*shape, batch, args.repeats, args.fallback, peak[isa], isa == "avx512")
              for batch in args.batch for shape in SHAPES]
    print(f"{'layer':>22} {'N':>2} {'fp32':>7} {'packed':>7} {'avx2':>7} {'fallback':>8} {'speedup':>7} "
          f"{'GOPS':>6} {'of peak':>7} {'max |diff|':>10}")
    for r in layers:
        print(f"{r['shape']:>22} {r['batch']:>2} {r['fp32_ms']:>7.3f} {r['packed_ms']:>7.3f} "
              f"{r.get('packed_avx2_ms', float('nan')):>7.3f} {r.get('fallback_ms', float('nan')):>8.2f} "
              f"{r['speedup']:>6.1f}x {r['gops']:>6.0f} {r['peak_fraction']:>7.0%} {r['max_abs_difference']:>10.1e}")
    print(f"times in ms, best of {args.repeats}; speedup = fp32 / packed")
    network = bench_networks(args.image_size, args.repeats, args.fallback, args.check_draws)
    print(f"\nwhole network, 1x3x{args.image_size}x{args.image_size}: FP32 ResNet-18 {network['fp32_ms']:.2f} ms, "
          f"Bi-Real-18 float {network['binary_float_ms']:.2f} ms, packed {network['packed_ms']:.2f} ms "
          f"({network['speedup']:.2f}x faster than FP32; packed = float to {network['tolerance']:g} on "
          f"{network['agreeing_draws']}/{len(network['max_abs_differences'])} random 64x64 images)"
          + (f", fallback {network['fallback_ms']:.1f} ms" if "fallback_ms" in network else ""))
    for name, ms in network["packed_breakdown_ms"].items():
        print(f"  {name:>36}: {ms:6.2f} ms")
    seconds = build_seconds()
    print(f"\nfresh build of the kernel: {seconds:.2f} s ({native.path.name})")
    write_record(args.json, {"repeats": args.repeats, "seed": args.seed, "busy_processes": args.busy, "isa": isa,
                             "popcount_peak_gops": peak,
                             "popcount_peak_method": "xnor_popcount_rate: XOR+popcount+add of a 4 KiB L1 buffer "
                                                     "against 8 register words, all threads, 128 ops per word",
                             "build_seconds": seconds, "layers": layers, "network": network})
    return 0


if __name__ == "__main__":
    sys.exit(main())
