"""The binarizers' elementwise work: the library's formulation against the plain PyTorch one.

    python bench/binarizer_ops.py [--shape 512 4608] [--repeats 20] [--json runs/bench/binarizer_ops.json]

A binary training step binarizes every latent weight (11M for ResNet-18) and every binary
activation, forward and backward.  Each of those operations is a handful of elementwise
passes, and on CPU the choice of PyTorch operator changes their cost several-fold.  For one
tensor of ``--shape`` (default: a layer4 3x3 convolution's weight, 512 filters of 4608) this
times, in one run, the library's implementation of each operation against the direct
transcription of its formula, checks that both give the same values, and prints the speed-up.
These measurements are why the library computes them the way it does (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_seconds, write_record  # noqa: E402

from cmim_dense.binary import binary_sign  # noqa: E402
from cmim_dense.binary.estimators import ClippedSTE, ErrorDecayEstimator  # noqa: E402
from cmim_dense.binary.rotation import random_orthogonal, rotation_shape, rotate_filters  # noqa: E402
from cmim_dense.binary.standardize import standardize_rows, unbiased_std  # noqa: E402

Pair = tuple[str, Callable[[], Tensor], Callable[[], Tensor]]


def standardize_by_formula(x: Tensor) -> Tensor:
    """(x - mean) / std per row, written as autograd sees the textbook formula."""
    centered = x - x.mean(dim=1, keepdim=True)
    return centered / centered.std(dim=1, keepdim=True)


def forward_backward(function: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor) -> Callable[[], Tensor]:
    """A call that runs ``function`` forward and backward and returns the input's gradient."""
    def run() -> Tensor:
        leaf = x.detach().requires_grad_()
        (result,) = torch.autograd.grad(function(leaf), leaf, grad)
        return result
    return run


def pairs(rows: int, columns: int) -> list[Pair]:
    """(operation, library call, plain-formula call) for each compared operation."""
    torch.manual_seed(0)
    x = torch.randn(rows, columns)
    grad = torch.randn(rows, columns)
    centered = x - x.mean(dim=1, keepdim=True)
    ede = ErrorDecayEstimator()
    ede.set_progress(0.5)
    t, k = ede.t, ede.k
    a, b = rotation_shape(columns)
    filters = x.reshape(rows, a, b)
    r1, r2 = random_orthogonal(a), random_orthogonal(b)
    return [
        ("sign, sign(0) = +1", lambda: binary_sign(x), lambda: torch.where(x >= 0, 1.0, -1.0)),
        ("unbiased std per row", lambda: unbiased_std(centered, dim=1), lambda: centered.std(dim=1)),
        ("standardize rows, fwd + bwd", forward_backward(standardize_rows, x, grad),
         forward_backward(standardize_by_formula, x, grad)),
        ("EDE backward", lambda: ede.backward(x, grad),
         lambda: grad * (k * t) * (1 - torch.tanh(t * x) ** 2)),
        ("clipped STE backward", lambda: ClippedSTE().backward(x, grad),
         lambda: grad.masked_fill(x.abs() > 1.0, 0.0)),
        ("RBNN rotation R1^T X R2", lambda: rotate_filters(filters, r1, r2), lambda: r1.T @ filters @ r2),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=[512, 4608], metavar=("ROWS", "COLUMNS"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default="runs/bench/binarizer_ops.json")
    args = parser.parse_args(argv)
    rows = []
    print(f"tensor {args.shape[0]} x {args.shape[1]}, best of {args.repeats}")
    print(f"{'operation':<30} {'library ms':>10} {'plain ms':>9} {'speed-up':>8} {'max |diff|':>10}")
    for name, library, plain in pairs(*args.shape):
        difference = (library() - plain()).abs().max().item()
        ours, theirs = best_seconds(library, args.repeats), best_seconds(plain, args.repeats)
        rows.append({"operation": name, "library_ms": 1000 * ours, "plain_ms": 1000 * theirs,
                     "speedup": theirs / ours, "max_abs_difference": difference})
        print(f"{name:<30} {1000 * ours:>10.3f} {1000 * theirs:>9.3f} {theirs / ours:>7.2f}x {difference:>10.1e}")
        if not math.isfinite(difference) or difference > 1e-4:
            print(f"error: {name}: the library and the formula disagree by {difference:.3g}", file=sys.stderr)
            return 1
    write_record(args.json, {"shape": args.shape, "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
