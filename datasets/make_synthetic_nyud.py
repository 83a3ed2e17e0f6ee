"""Render the built-in synthetic NYUD-v2 (indoor scenes in the official v7.3 .mat layout):

    python datasets/make_synthetic_nyud.py --out data/synthetic_nyud [--train 160 --test 60 --size 96x128]

writes nyu_depth_v2_labeled.mat, splits.mat and the exact surface normals normals.npy; prepare
them like the real file with ``datasets/prepare_nyud.py --mat OUT/nyu_depth_v2_labeled.mat
--splits OUT/splits.mat --normals OUT/normals.npy`` (without --normals, normals are plane-fitted).
(finetune/nyud.py --data synthetic does both by itself on first use.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmim_dense.arguments import image_size  # noqa: E402
from cmim_dense.data.synthetic_nyud import NORMALS_FILE, make_synthetic_nyud  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the .mat and splits.mat")
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--size", type=image_size, default="96x128", help="HEIGHTxWIDTH of every frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    height, width = args.size
    mat, splits = make_synthetic_nyud(args.out, args.train, args.test, height, width, args.seed)
    print(f"wrote {mat}, {splits} and {mat.with_name(NORMALS_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
