"""``python -m cmim_dense.export CKPT --out model.safetensors``: write a 1-bit export of a checkpoint.

CKPT is a pretrained backbone (``best.pt``/``last.pt`` of ``pretrain/run.py``) or a fine-tuned
dense model (``last.pt`` of ``finetune/nyud.py``: backbone bits, head, task, classes and input
normalisation in one file, for ``python -m cmim_dense.predict``).  Prints the file size against
the checkpoint model's FP32 state dict and checks that the model rebuilt from the file alone gives
outputs identical to the checkpoint's model (eval mode).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint_io import checkpoint_role, load_checkpoint, load_checkpoint_as
from ..cli import report_user_errors
from ..dense import dense_model_from_checkpoint
from ..models import model_from_checkpoint
from .export import export_model, load_exported


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cmim_dense.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="a pretraining checkpoint (last.pt / best.pt) or a "
                        "fine-tuned dense model (last.pt of finetune/nyud.py)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--output-stride", type=int, choices=[8, 16],
                        help="export the dilated backbone (a backbone for dense heads)")
    return parser.parse_args(argv)


def export_and_verify(args: argparse.Namespace) -> bool:
    """Export the checkpoint, print the sizes, and whether the file alone rebuilds identical outputs."""
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise ValueError(f"--out {args.out} is the checkpoint being exported; write the export to another file")
    model, meta, size = exported_network(args)
    report = export_model(model, args.out, meta)
    rebuilt, _ = load_exported(args.out)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        identical = torch.equal(model(x), rebuilt(x))
    identity = meta.get("backbone_meta", meta)
    what = f"{meta['task']} model ({meta['head']}) over " if "task" in meta else ""
    print(f"{what}{identity['method']} {identity['arch']}: packed {report.packed_layers} binary convs "
          f"({report.binary_weights:,} weights at 1 bit)")
    print(f"wrote {report.path}: {report.file_bytes:,} bytes ({report.file_bytes / 2**20:.2f} MiB)")
    print(f"FP32 state dict: {report.float_bytes:,} bytes ({report.float_bytes / 2**20:.2f} MiB); "
          f"export is {report.ratio:.2f}x smaller")
    print(f"round trip at 1x3x{size[0]}x{size[1]}: outputs " + ("identical" if identical else "DIFFER"))
    return identical


def exported_network(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, tuple[int, int]]:
    """The checkpoint's network in eval mode, the meta the export records, and the input size of the
    round-trip check (the training crop of a dense model, the pretraining size of a backbone)."""
    if checkpoint_role(load_checkpoint(args.checkpoint, mmap=True)["meta"]) == "dense":
        if args.output_stride is not None:
            raise ValueError("--output-stride applies to a backbone; a fine-tuned model keeps the stride it was "
                             "trained at")
        model, meta = dense_model_from_checkpoint(args.checkpoint)
        return model, meta, tuple(meta["config"]["crop"])
    checkpoint = load_checkpoint_as(args.checkpoint, "backbone")
    model = model_from_checkpoint(checkpoint, str(args.checkpoint), output_stride=args.output_stride).eval()
    meta = dict(checkpoint["meta"])
    if args.output_stride is not None:
        meta["output_stride"] = args.output_stride
    size = meta.get("image_size") or 64
    return model, meta, (size, size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status, identical = report_user_errors(lambda: export_and_verify(args))
    if identical is None:
        return status
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
