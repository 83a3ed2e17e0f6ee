"""The main job, one command, on the built-in data (or the paper's sweeps):

    python pipeline/run.py                       # pretrain fp, bnn, irnet, irnet+cmim, rbnn, rbnn+cmim;
                                                 # seg, depth, normals fine-tune each; chart + table
    python pipeline/run.py --tasks depth          # depth fine-tunes only: the tables (no seg-vs-depth chart)
    python pipeline/run.py --sweep lambda --methods irnet,rbnn    # CMIM lambda grid (Table 3)
    python pipeline/run.py --sweep n_nce --methods irnet          # negatives grid (Fig. 4e-f)
    python pipeline/run.py --sweep methods --methods bnn,irnet,rbnn,reactnet --teacher T  # with/without CMIM
    python pipeline/run.py --seeds 3                              # every run 3 times: mean ± 95 % CI
    python pipeline/run.py --study cmim --jobs 2                  # the CMIM evidence study, two runs at a time
    python pipeline/run.py --study binary-heads --jobs 2          # binary vs full-precision heads, 6 seeds

--seeds N runs every pretraining and fine-tuning N times, seeds 0..N-1 (the fine-tunes of seed k
use the backbone pretrained with seed k), in ROOT/pretrain/RUN/seed<k> and
ROOT/finetune/RUN/seed<k>/TASK (one seed: ROOT/pretrain/RUN, ROOT/finetune/RUN/TASK; TASK seg, depth,
normals).
The chart then draws each backbone at its means with 95 % confidence intervals (Student t over
the seeds) as error bars, the table gives every metric as mean ± half-width, and a second table
the paired difference of each method+cmim and its method, seed by seed.  Raising N later reuses
the finished seeds; going from 1 seed to several starts over in seed<k> folders (use a new --root:
the single-seed runs would be charted as backbones of their own).

Re-running continues: finished stages are skipped.  Thin entry point over cmim_dense.pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmim_dense.methods import CMIM_SWEEPS  # noqa: E402  (no torch: --help answers at once)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="output folder (default runs/main, or runs/sweep_KIND)")
    parser.add_argument("--methods", help="comma-separated methods (default: the main job's six)")
    parser.add_argument("--sweep", choices=["methods", *CMIM_SWEEPS], help="run a grid instead of the main job")
    parser.add_argument("--study", choices=["cmim", "binary-heads"],
                        help="cmim: the CMIM evidence study, irnet and rbnn at lambda 0, 0.8, 3.2 in an over-fitting "
                             "regime, 12 seeds, the first 3 transferred to the built-in rooms (docs/methods.md); "
                             "binary-heads: fp, rbnn and irnet backbones (6 seeds), every task under the "
                             "full-precision head and under its IR-Net binary version, for 3 seeds also distilled "
                             "and as one multi-task model (docs/binary_heads.md)")
    parser.add_argument("--values", help="comma-separated values of the swept CMIM setting (--study: lambdas)")
    parser.add_argument("--teacher", help="full-precision teacher for methods that need one (reactnet, s2bnn, dirnet)")
    parser.add_argument("--seeds", metavar="N",
                        help="run every pretraining and fine-tuning N times, seeds 0..N-1 (default 1; --study cmim: "
                        "12, its transfer fine-tunes for the first 3, with --quick 3; --study binary-heads: 6)")
    parser.add_argument("--tasks", help="comma-separated dense tasks of the main job (default seg,depth,normals; "
                        "the tables take any, the seg-vs-depth chart needs seg and depth)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run N pretrainings / fine-tunes at a time in worker processes that share the CPU "
                             "threads, each stage's output in ROOT/logs/ (default 1; 2 on 2 cores finishes a "
                             "many-run job about 1.3x sooner)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test of the whole path)")
    parser.add_argument("--no-packed-backbone", dest="packed_backbone", action="store_false",
                        help="fine-tune and evaluate over the frozen binary backbones in float on a CPU too (default: "
                             "on the packed 1-bit kernel, the same features up to sign ties, docs/export.md)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    from cmim_dense.pipeline import (HEAD_STUDY_METHODS, HEAD_STUDY_SEEDS, MAIN_METHODS, MAIN_TASKS,
                                     QUICK_STUDY_SEEDS, STUDY_METHODS, STUDY_SEEDS, binary_head_study_stages,
                                     cmim_study_stages, main_job_stages, sweep_stages)
    from cmim_dense.stages import run_stages
    from cmim_dense.run_folder import FolderInUseError

    if args.study and args.sweep:
        print("error: --study and --sweep are separate jobs; give one", file=sys.stderr)
        return 2
    if args.tasks and (args.study or args.sweep):
        print("error: --tasks chooses the main job's fine-tunes; drop it with --study or --sweep", file=sys.stderr)
        return 2
    study_methods = {"cmim": STUDY_METHODS, "binary-heads": HEAD_STUDY_METHODS}
    methods = tuple(args.methods.split(",")) if args.methods else study_methods.get(args.study, MAIN_METHODS)
    kind = f"study_{args.study.replace('-', '_')}" if args.study else f"sweep_{args.sweep}" if args.sweep else None
    root = Path(args.root or (f"runs/{kind}" if kind else "runs/main"))
    progress = args.progress  # in a worker, whose output goes to its log, progress lines replace the bar
    try:
        values = tuple(float(v) for v in args.values.split(",")) if args.values else None
        study_seeds = {"cmim": QUICK_STUDY_SEEDS if args.quick else STUDY_SEEDS, "binary-heads": HEAD_STUDY_SEEDS}
        given = args.seeds if args.seeds is not None else str(study_seeds.get(args.study, 1))
        seeds = int(given) if given.strip().isdigit() else given  # check_seeds names a bad one
        if args.study == "binary-heads":
            stages = binary_head_study_stages(root, methods, quick=args.quick, progress=progress, seeds=seeds,
                                              packed_backbone=args.packed_backbone)
        elif args.study:
            stages = cmim_study_stages(root, methods, values=values, quick=args.quick, progress=progress, seeds=seeds,
                                       packed_backbone=args.packed_backbone)
        elif args.sweep is None:
            tasks = tuple(name.strip() for name in args.tasks.split(",")) if args.tasks is not None else MAIN_TASKS
            stages = main_job_stages(root, methods, quick=args.quick, progress=progress, teacher=args.teacher,
                                     seeds=seeds, tasks=tasks, packed_backbone=args.packed_backbone)
        else:
            stages = sweep_stages(root, methods, kind=args.sweep, values=values, quick=args.quick, progress=progress,
                                  teacher=args.teacher, seeds=seeds, packed_backbone=args.packed_backbone)
    except ValueError as error:  # unknown method, bad values or seeds
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        failed = run_stages(stages, root, args.jobs)
    except (FolderInUseError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages and every checkpoint written are complete; rerun the same command to "
              "continue", file=sys.stderr)
        return 130
    if failed:
        print(f"{len(failed)} stage(s) failed or were skipped: {', '.join(failed)}; fix the cause and rerun the "
              "same command to continue", file=sys.stderr)
        return 1
    if args.study == "cmim":
        print(f"study: {root / 'cmim_study.md'} (tables) and {root / 'cmim_study.png'} (curves)")
    chart = root / "seg_vs_depth.png"  # absent when the runs lack seg or depth (the chart stage said why)
    print((f"chart: {chart} (and .svg); " if chart.is_file() else "")
          + f"table: {root / 'seg_vs_depth.md'} (and .csv"
          + (", mean ± 95 % CI over the seeds" if seeds > 1 else "") + ")"
          + (f"; qualitative grid: {root / 'qualitative.png'}" if kind is None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
