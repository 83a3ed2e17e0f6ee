"""``python -m cmim_dense.summary CKPT``: per-layer parameters, storage, BOPs, FLOPs and OPs of a backbone.

Counts one forward pass at ``--image-size`` (default: the checkpoint's training size, 224 for a
fresh ``--method`` model) and compares the totals with the
full-precision twin (same architecture, classes and output stride), using the papers'
convention OPs = BOPs / 64 + FLOPs (docs/accounting.md).  Without a checkpoint,
``--method NAME --arch ARCH`` counts a freshly built model.  ``--head NAME`` (a registered head:
deeplabv3, deeplabv3plus, fpn, unet) counts the dense model instead (default 480x640, the head's
smallest output stride, 256 wide, 40 classes) and reports the binary backbone and the
full-precision head separately: the head dominates.
"""

from __future__ import annotations

import argparse
import sys

from .arguments import image_size
from .cli import report_user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cmim_dense.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("checkpoint", nargs="?", metavar="CKPT", help="a pretraining checkpoint (last.pt / best.pt)")
    source.add_argument("--method", help="count a fresh model of this method instead of a checkpoint")
    parser.add_argument("--arch", default="resnet18", help="with --method (default resnet18)")
    parser.add_argument("--output-stride", type=int, choices=[8, 16, 32],
                        help="count the dilated backbone (with --head: default the head's smallest, 8 for DeepLab)")
    parser.add_argument("--head", metavar="NAME", help="count the dense model over the backbone, backbone and "
                        "head apart (a registered head, e.g. deeplabv3)")
    parser.add_argument("--decoder-channels", type=int, default=256, help="with --head: its width (default 256)")
    parser.add_argument("--classes", type=int, help="output classes: of the classifier with --method (default "
                        "1000), of the head with --head (default 40)")
    parser.add_argument("--image-size", type=image_size, metavar="N|HxW",
                        help="input size (default: the checkpoint's training size, 224 with --method; 480x640 with "
                             "--head)")
    parser.add_argument("--json", metavar="OUT", help="also write every count to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .model_summary import report_backbone, report_dense  # torch loads here, after --help and the argument checks

    status, _ = report_user_errors(lambda: (report_dense if args.head is not None else report_backbone)(args))
    return status


if __name__ == "__main__":
    sys.exit(main())
