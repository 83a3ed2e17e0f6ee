"""``python -m cmim_dense.export CKPT --out model.safetensors``: write a 1-bit export of a checkpoint.

Prints the file size against the checkpoint model's FP32 state dict and checks that the
model rebuilt from the file alone gives outputs identical to the checkpoint's model (eval mode).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint_io import load_checkpoint_as
from ..cli import report_user_errors
from ..models import model_from_checkpoint
from .export import export_model, load_exported


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cmim_dense.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="a pretraining checkpoint (last.pt / best.pt)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--output-stride", type=int, choices=[8, 16], help="export the dilated backbone (dense heads)")
    return parser.parse_args(argv)


def export_and_verify(args: argparse.Namespace) -> bool:
    """Export the checkpoint, print the sizes, and whether the file alone rebuilds identical outputs."""
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise ValueError(f"--out {args.out} is the checkpoint being exported; write the export to another file")
    checkpoint = load_checkpoint_as(args.checkpoint, "backbone")
    model = model_from_checkpoint(checkpoint, str(args.checkpoint), output_stride=args.output_stride).eval()
    meta = dict(checkpoint["meta"])
    if args.output_stride is not None:
        meta["output_stride"] = args.output_stride
    report = export_model(model, args.out, meta)
    rebuilt, _ = load_exported(args.out)
    size = meta.get("image_size") or 64
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        identical = torch.equal(model(x), rebuilt(x))
    print(f"{meta['method']} {meta['arch']}: packed {report.packed_layers} binary convs "
          f"({report.binary_weights:,} weights at 1 bit)")
    print(f"wrote {report.path}: {report.file_bytes:,} bytes ({report.file_bytes / 2**20:.2f} MiB)")
    print(f"FP32 state dict: {report.float_bytes:,} bytes ({report.float_bytes / 2**20:.2f} MiB); "
          f"export is {report.ratio:.2f}x smaller")
    print(f"round trip at 1x3x{size}x{size}: outputs " + ("identical" if identical else "DIFFER"))
    return identical


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status, identical = report_user_errors(lambda: export_and_verify(args))
    if identical is None:
        return status
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
