"""Analysis figures of pretrained backbones: ``python plots/analysis.py {tsne,correlation,sweep} ...``.

Thin entry point over :mod:`cmim_dense.plots.analysis`:

  tsne CKPT [CKPT ...]         t-SNE of binary activations coloured by class (CMIM Fig. 3)
  correlation CKPT [CKPT ...]  class-sorted correlation maps of binary activations (Fig. 4a-d)
  sweep RUN [RUN ...]          best top-1 against CMIM lambda or n_nce, one line per method (Table 3)

CKPT is a best.pt/last.pt of pretrain/run.py; RUN a run folder, a folder of runs, a best.pt or a glob.
Each writes OUT.png and OUT.svg (sweep also OUT.csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    activation_commands = {}
    for name, samples, what in (("tsne", 500, "t-SNE of activations coloured by class (Fig. 3)"),
                                ("correlation", 200, "class-sorted correlation maps of activations (Fig. 4a-d)")):
        sub = activation_commands[name] = commands.add_parser(name, help=what)
        sub.add_argument("checkpoints", nargs="+", help="pretraining checkpoints (one panel each)")
        sub.add_argument("--site", default="layer4",
                         help="layer1..layer4 (binary input of the stage's last binary conv), a tap site name, "
                              "or 'pooled' (default layer4)")
        sub.add_argument("--samples", type=int, default=samples, help=f"validation images (default {samples})")
        sub.add_argument("--data", help="data to run on (default: the checkpoint's own, e.g. synthetic)")
        sub.add_argument("--out", default=f"runs/plots/{name}", help="output path without extension")
    tsne = activation_commands["tsne"]
    tsne.add_argument("--perplexity", type=float, default=30.0, help="effective neighbours (default 30)")
    tsne.add_argument("--iterations", type=int, default=1000, help="gradient steps (default 1000)")
    tsne.add_argument("--seed", type=int, default=0, help="seed of the random start (default 0)")
    activation_commands["correlation"].add_argument("--kind", choices=["pearson", "cosine"], default="pearson")
    sweep = commands.add_parser("sweep", help="best top-1 against a CMIM hyper-parameter")
    sweep.add_argument("runs", nargs="+", help="pretraining run folders, folders of runs, best.pt files or globs")
    sweep.add_argument("--param", choices=["lambda", "n_nce"], default="lambda", help="the swept value")
    sweep.add_argument("--xscale", choices=["linear", "log"],
                       help="default: log when the values are positive and span 10x or more")
    sweep.add_argument("--out", default="runs/plots/sweep", help="output path without extension")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cmim_dense.cli import report_user_errors
    from cmim_dense.plots.analysis import ChartResult, correlation_chart, sweep_chart, tsne_chart

    def chart() -> ChartResult:
        if args.command == "tsne":
            return tsne_chart(args.checkpoints, args.out, args.site, args.samples, args.perplexity,
                              args.iterations, args.seed, args.data)
        if args.command == "correlation":
            return correlation_chart(args.checkpoints, args.out, args.site, args.samples, args.kind, args.data)
        return sweep_chart(args.runs, args.out, args.param, args.xscale)

    status, result = report_user_errors(chart)
    if result is None:
        return status
    for skipped in result.skipped:
        print(f"warning: skipped {skipped}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print("wrote " + ", ".join(str(path) for path in result.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
