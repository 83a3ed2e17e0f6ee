"""``python -m cmim_dense.convert --format rbnn SRC --out DST.pt``: a published ImageNet checkpoint
as a backbone checkpoint that ``finetune/nyud.py --backbone``, the export and the charts read.

The architecture (ResNet-18 or -34) and the method are read from the file and checked by a
strict load; the output's meta names the source file, its SHA-256 and the top-1 it reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .cli import report_user_errors

if TYPE_CHECKING:
    from .models.conversion import Conversion


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cmim_dense.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SRC", help="the published file (.pth, .pth.tar or .safetensors)")
    parser.add_argument("--format", required=True, metavar="NAME",
                        help="the repository the file comes from: torchvision, timm, irnet, rbnn, bireal or reactnet "
                             "(each described in docs/backbones.md)")
    parser.add_argument("--out", required=True, metavar="DST.pt", help="the backbone checkpoint to write")
    parser.add_argument("--real-weights", action="store_true",
                        help="a ReActNet step-1 file (binary activations, real-valued weights)")
    return parser.parse_args(argv)


def describe(conversion: Conversion) -> str:
    meta = conversion.meta
    top1 = "not stored in the file" if meta["top1"] is None else f"{100 * meta['top1']:.2f} % (as the file reports)"
    lines = [f"{meta['converted_from']['format']} -> {meta['method']} {meta['arch']}, {meta['num_classes']} classes; "
             f"ImageNet top-1 {top1}"]
    if conversion.binary_weights:
        lines.append(f"binary weights whose sign input is exactly 0: {conversion.zero_weights:,} of "
                     f"{conversion.binary_weights:,} (+1 here; torch.sign in the official code gives 0)")
    lines.append(f"wrote {conversion.path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .models.conversion import convert_checkpoint  # torch loads here, after --help and the argument checks

    status, conversion = report_user_errors(
        lambda: convert_checkpoint(args.source, args.format, args.out, args.real_weights))
    if conversion is not None:
        print(describe(conversion))
    return status


if __name__ == "__main__":
    sys.exit(main())
