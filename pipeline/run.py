"""The main job, one command, on the built-in data (or the paper's sweeps):

    python pipeline/run.py                       # pretrain fp, bnn, irnet, irnet+cmim, rbnn, rbnn+cmim;
                                                 # seg + depth fine-tune each; chart + table
    python pipeline/run.py --sweep lambda --methods irnet,rbnn    # CMIM lambda grid (Table 3)
    python pipeline/run.py --sweep n_nce --methods irnet          # negatives grid (Fig. 4e-f)
    python pipeline/run.py --sweep methods --methods bnn,irnet,rbnn,reactnet --teacher T  # with/without CMIM

Re-running continues: finished stages are skipped.  Thin entry point over cmim_dense.pipeline.
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
    parser.add_argument("--root", help="output folder (default runs/main, or runs/sweep_KIND)")
    parser.add_argument("--methods", help="comma-separated methods (default: the main job's six)")
    parser.add_argument("--sweep", choices=["methods", "lambda", "n_nce"], help="run a grid instead of the main job")
    parser.add_argument("--values", help="comma-separated values of the swept CMIM setting")
    parser.add_argument("--teacher", help="full-precision teacher for methods that need one (reactnet, s2bnn, dirnet)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test of the whole path)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    from cmim_dense.pipeline import MAIN_METHODS, main_job_stages, run_stages, sweep_stages

    methods = tuple(args.methods.split(",")) if args.methods else MAIN_METHODS
    root = Path(args.root or ("runs/main" if args.sweep is None else f"runs/sweep_{args.sweep}"))
    try:
        values = tuple(float(v) for v in args.values.split(",")) if args.values else None
        if args.sweep is None:
            stages = main_job_stages(root, methods, args.quick, args.progress, args.teacher)
        else:
            stages = sweep_stages(args.sweep, methods, root, values, args.quick, args.progress, args.teacher)
    except ValueError as error:  # unknown method, bad values
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = run_stages(stages)
    if failed:
        print(f"{len(failed)} stage(s) failed or were skipped: {', '.join(failed)}; fix the cause and rerun the "
              "same command to continue", file=sys.stderr)
        return 1
    print(f"chart: {root / 'seg_vs_depth.png'} (and .svg); table: {root / 'seg_vs_depth.md'} (and .csv)"
          + (f"; qualitative grid: {root / 'qualitative.png'}" if args.sweep is None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
