"""Size of 1-bit exports against FP32 state dicts, for every method's ResNet-18 (1000 classes).

    python bench/export_size.py [--arch resnet18] [--methods bireal irnet ...] [--json OUT]

For each method it builds a fresh backbone, writes its 1-bit safetensors export to a
temporary folder and prints, side by side: the exported file, the same model's FP32 state
dict (as safetensors), the full-precision ResNet's FP32 state dict, and the theoretical
storage of the papers' convention (1 bit per binary weight, 32 per real parameter; see
docs/accounting.md).  Sizes only: nothing here is a speed claim.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import safetensors.torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_record  # noqa: E402

from cmim_dense import create_model, list_recipes  # noqa: E402
from cmim_dense.accounting import count_model  # noqa: E402
from cmim_dense.export import export_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    binary = [recipe.name for recipe in list_recipes() if recipe.is_binary]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--methods", nargs="+", default=binary)
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)

    fp = create_model(args.arch, "fp")
    fp_bytes = len(safetensors.torch.save({k: v.contiguous() for k, v in fp.state_dict().items()}))
    fp_bits = count_model(fp, (3, 32, 32)).totals().bits
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            model = create_model(args.arch, method).eval()
            meta = {"method": method, "arch": args.arch, "num_classes": 1000}
            report = export_model(model, Path(folder) / f"{method}.safetensors", meta)
            bits = count_model(model, (3, 32, 32)).totals().bits
            rows.append({"method": method, "file_bytes": report.file_bytes, "float_bytes": report.float_bytes,
                         "ratio_own_fp32": report.ratio, "ratio_fp_resnet": fp_bytes / report.file_bytes,
                         "theoretical_bytes": bits / 8, "theoretical_ratio": fp_bits / bits})
    print(f"{args.arch}, 1000 classes; FP32 {args.arch} state dict: {fp_bytes:,} bytes ({fp_bytes / 2**20:.2f} MiB)")
    print(f"{'method':<9} {'export (MiB)':>12} {'own FP32 (MiB)':>14} {'ratio':>6} {'vs FP ResNet':>12} "
          f"{'theory (MiB)':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r['method']:<9} {r['file_bytes'] / 2**20:>12.3f} {r['float_bytes'] / 2**20:>14.2f} "
              f"{r['ratio_own_fp32']:>5.2f}x {r['ratio_fp_resnet']:>11.2f}x {r['theoretical_bytes'] / 2**20:>12.3f} "
              f"{r['theoretical_ratio']:>5.2f}x")
    if args.json:
        write_record(args.json, {"arch": args.arch, "fp_bytes": fp_bytes, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
