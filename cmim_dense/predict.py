"""``python -m cmim_dense.predict --model FILE IMAGE... --out DIR``: a fine-tuned dense model on your own images.

``FILE`` is a 1-bit export of a fine-tuned model (``python -m cmim_dense.export RUN/last.pt --out
FILE``; it runs on the packed XNOR-popcount kernel) or the fine-tuned ``last.pt`` itself.  Each
image, of any size and in any format Pillow reads, is normalised as the backbone was pretrained,
padded at the bottom and right to the output stride, predicted, and cropped back to its own size.
``DIR/NAME.png`` shows the prediction (classes in the NYUD-v2 palette, depth on viridis from the
image's nearest to its farthest predicted point, normals as RGB = (n + 1) / 2) and
``DIR/NAME.npy`` holds it (class ids (H, W) uint8, metres (H, W) float32, or unit normals (H, W, 3)
float32); a multi-task model writes ``DIR/NAME_TASK.png`` and ``.npy`` for each of its tasks.
"""

from __future__ import annotations

import argparse
import sys

from .cli import report_user_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmim_dense.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a fine-tuned model's 1-bit export or its last.pt")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, help="folder for NAME.png and NAME.npy")
    args = parser.parse_args(argv)
    from .prediction import predict_files  # torch loads here, after --help and the argument checks

    status, written = report_user_errors(lambda: predict_files(args.model, args.images, args.out))
    if written is not None:
        print(f"wrote {len(written) // 2} predictions to {args.out}/ (a .png and a .npy each)")
    return status


if __name__ == "__main__":
    sys.exit(main())
