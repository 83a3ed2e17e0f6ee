"""Qualitative grid (CMIM paper Fig. 5a) of fine-tuned backbones on chosen NYUD-v2 test images:

    python plots/qualitative.py runs/main/finetune/fp runs/main/finetune/rbnn+cmim --images 0,7 --out runs/plots/qualitative

Each RUN folder holds ``seg/last.pt`` and ``depth/last.pt`` of finetune/nyud.py; the models are
rebuilt from those files alone.  Writes OUT.png and OUT.svg.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="fine-tuning folders, each with seg/ and depth/ runs")
    parser.add_argument("--images", default="0,1", help="comma-separated test image indices (default 0,1)")
    parser.add_argument("--out", default="runs/plots/qualitative", help="output path without extension")
    args = parser.parse_args(argv)
    from cmim_dense.cli import report_user_errors
    from cmim_dense.plots.predictions import qualitative_chart

    status, files = report_user_errors(
        lambda: qualitative_chart(args.runs, [int(i) for i in args.images.split(",")], args.out))
    if files is None:
        return status
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
