"""Segmentation vs depth chart (CMIM paper Fig. 5b): ``python plots/seg_vs_depth.py runs/finetune``.

Thin entry point: parses flags and calls :func:`cmim_dense.plots.seg_depth.seg_depth_chart`.
Inputs are fine-tuning run folders (each with metrics.json), metrics.json files, folders of
run folders, or globs.  Writes the tables OUT.csv and OUT.md (every backbone, every task it was
fine-tuned on) and the chart OUT.png, OUT.svg of the backbones with seg and depth runs; runs
that cannot be read or joined are listed on stderr and skipped.  Runs without seg and depth (a
depth-only job) get the tables and one line saying why there is no chart.

Seeds: the backbones of one method whose paths differ only in a ``seed<k>`` folder (as
``pipeline/run.py --seeds N`` lays them out) make one dot at their means, with the 95 %
confidence intervals (Student t over the seeds) as error bars; the table gives mean ± half-width,
and further tables the paired differences, seed by seed, of each method+cmim and its method
(OUT_cmim_differences.csv) and of each binary head and the full-precision head over the same
backbones (OUT_binary_head_differences.csv).  A chart of single runs says "1 seed: no error bars".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, metrics.json files, folders of runs or globs")
    parser.add_argument("--out", default="runs/plots/seg_vs_depth", help="output path without extension")
    parser.add_argument("--classes", type=int, choices=[13, 40], help="keep only segmentation runs with these classes")
    parser.add_argument("--title", help="chart title (default: names the protocol)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cmim_dense.cli import report_user_errors
    from cmim_dense.plots.seg_depth import seg_depth_chart

    status, result = report_user_errors(lambda: seg_depth_chart(args.runs, args.out, args.classes, args.title))
    if result is None:
        return status
    for skipped in result.skipped:
        print(f"warning: skipped {skipped}", file=sys.stderr)
    for note in result.notes + result.left_out:
        print(f"note: {note}", file=sys.stderr)
    if result.no_chart:
        print(result.no_chart_line())
    count, runs = len(result.points), sum(point.n for point in result.points)
    charted = f", {len(result.charted)} in the chart" if result.charted and len(result.charted) < count else ""
    print(f"{count} backbone{'s' * (count != 1)} from {runs} seed run{'s' * (runs != 1)}{charted} "
          f"({len(result.skipped)} inputs skipped); wrote " + ", ".join(str(path) for path in result.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
