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

from ..cli import report_user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cmim_dense.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="a pretraining checkpoint (last.pt / best.pt) or a "
                        "fine-tuned dense model (last.pt of finetune/nyud.py)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--output-stride", type=int, choices=[8, 16],
                        help="export the dilated backbone (a backbone for dense heads)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .roundtrip import export_and_verify  # torch loads here, after --help and the argument checks

    status, identical = report_user_errors(lambda: export_and_verify(args.checkpoint, args.out, args.output_stride))
    if identical is None:
        return status
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
