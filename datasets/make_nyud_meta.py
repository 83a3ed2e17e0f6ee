"""Regenerate cmim_dense/data/nyud_meta.json from the official NYUD-v2 meta-data files.

    python datasets/make_nyud_meta.py --src ../shared/data/nyuv2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmim_dense.cli import report_user_errors  # noqa: E402
from cmim_dense.data.nyud_meta import META_FILE, derive_meta  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="folder with splits.mat, classMapping40.mat, class13Mapping.mat")
    parser.add_argument("--out", default=str(META_FILE), help=f"output JSON (default {META_FILE})")
    args = parser.parse_args()
    status, meta = report_user_errors(lambda: derive_meta(args.src))
    if meta is None:
        sys.exit(status)
    Path(args.out).write_text(json.dumps(meta.to_dict(), separators=(",", ":")) + "\n")
    print(f"wrote {args.out}: {len(meta.train)} train / {len(meta.test)} test frames, {len(meta.raw_names)} raw classes")


if __name__ == "__main__":
    main()
