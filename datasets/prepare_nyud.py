"""Prepare NYUD-v2 from the official labeled file, once:

    python datasets/prepare_nyud.py --mat nyu_depth_v2_labeled.mat --out data/nyud

writes upright 480x640 RGB, depth in metres (filled and raw), labels mapped 894 -> 40 and
40 -> 13 (0-based, 255 = unlabeled) and surface normals (a local plane fit of the raw depth with
the NYUD-v2 RGB intrinsics, or --normals FILE), split 795/654 by the official split (or --splits
FILE), as memory-mappable arrays (layout: docs/nyud.md).  Then: finetune/nyud.py --data data/nyud.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmim_dense.cli import report_user_errors  # noqa: E402
from cmim_dense.data.nyud_prepare import prepare_nyud  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--splits", help="a split file laid out like the official splits.mat (default: the official split)")
    parser.add_argument("--normals", help="an .npy of (frames, H, W, 3) normals of every frame of --mat, used "
                        "instead of the plane fit (make_synthetic_nyud.py's exact normals.npy)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    status, out = report_user_errors(
        lambda: prepare_nyud(args.mat, args.out, args.splits, force=args.force, progress=args.progress,
                             normals=args.normals))
    if out is None:
        return status
    print(f"prepared NYUD-v2 in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
