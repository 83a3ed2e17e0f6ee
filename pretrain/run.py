"""Pretrain a (binary) ResNet: ``python pretrain/run.py --method irnet``.

Thin entry point: parses flags and calls :func:`cmim_dense.engine.run_pretraining`.
Unset flags take the method recipe's defaults (see ``--list-methods`` and docs/methods.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmim_dense.methods import CMIM_CHOICES, list_recipes  # noqa: E402  (no torch: --help answers at once)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-methods", action="store_true", help="print every method recipe and exit")
    parser.add_argument("--evaluate", metavar="CKPT", help="only evaluate a checkpoint on --data (default: its own data)")
    parser.add_argument("--config", help="YAML file of flag values (e.g. configs/table2_*.yaml), or a run's "
                        "config.json, which recreates that run; flags given beside it replace its values")
    parser.add_argument("--method", help="NAME or NAME+cmim (default: irnet)")
    parser.add_argument("--arch", help="backbone: resnet18 (default), resnet34 or resnet18_cifar")
    parser.add_argument("--data", help="'synthetic' (built-in, default) or an ImageNet-style folder")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--lr", type=float, help="default: the recipe's, scaled by batch size")
    parser.add_argument("--optimizer", help="sgd or adam (default: the recipe's)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--schedule", help="learning-rate schedule: cos, linear or step (default: the recipe's)")
    parser.add_argument("--warmup", type=float, help="warm-up epochs")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--teacher", help="full-precision teacher for reactnet, s2bnn, dirnet: a torchvision/timm "
                        "ResNet state dict or an fp checkpoint of this tool")
    cmim = parser.add_argument_group("CMIM (methods NAME+cmim)")
    cmim.add_argument("--cmim-lambda", type=float, help="weight of the CMIM loss (default 0.8)")
    cmim.add_argument("--cmim-beta", type=float, help="layer weighting base, > 1 (default 2)")
    cmim.add_argument("--cmim-tau", type=float, help="critic temperature (default 0.1)")
    cmim.add_argument("--cmim-nce-n", type=int, help="negatives per anchor, well below the training set size (default "
                      "16384; on the built-in data 256 or a quarter of its samples)")
    cmim.add_argument("--cmim-layers", help="stages, blocks or all (default stages)")
    cmim.add_argument("--cmim-variant", choices=CMIM_CHOICES["variant"],
                      help="paper: layer-wise a_B/a_F contrast (default); code: the official code's CRD with --teacher")
    cmim.add_argument("--cmim-bank-dtype", choices=CMIM_CHOICES["bank_dtype"],
                      help="memory bank precision (float16 halves it)")
    cmim.add_argument("--cmim-embed", choices=CMIM_CHOICES["embed"], help="critic representation (default mlp)")
    cmim.add_argument("--cmim-normalizer", choices=CMIM_CHOICES["normalizer"],
                      help="critic normaliser Z: running mean (default), fixed on the first batch (CRD), or none")
    cmim.add_argument("--cmim-negatives", choices=CMIM_CHOICES["negatives"],
                      help="negatives from other classes only (default, the official code's) or any other sample "
                           "(label-free)")
    parser.add_argument("--out", help="output folder (default: runs/pretrain/METHOD)")
    parser.add_argument("--amp", action="store_true", default=None, help="float16 autocast + GradScaler (CUDA)")
    parser.add_argument("--channels-last", action="store_true", default=None, help="channels-last memory format")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the network for the training steps (TorchInductor; the first steps "
                             "compile, the results are the same to float rounding; validation stays eager)")
    parser.add_argument("--synthetic-samples", type=int, help="training images of the built-in set (default 2000)")
    parser.add_argument("--synthetic-val-samples", type=int,
                        help="validation images of the built-in set (default: a quarter of --synthetic-samples)")
    parser.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start from the weights of this checkpoint (same architecture), e.g. the last.pt of a "
                             "diverged run, with any other settings; optimizer and CMIM state start afresh")
    parser.add_argument("--eval-every", type=int, metavar="N",
                        help="validate every N epochs and after the last (default 1); best.pt is the best validated "
                             "epoch")
    parser.add_argument("--save-every", type=int, metavar="N",
                        help="write last.pt (what --resume continues from) every N epochs and after the last "
                             "(default 1); a resumed run repeats the epochs since")
    parser.add_argument("--log-every", type=float, metavar="SECONDS",
                        help="where no progress bar is drawn (output not a terminal), a progress line every this "
                             "many seconds (default 30; 0: none)")
    parser.add_argument("--no-progress", dest="progress_bar", action="store_false", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_methods:
        recipes = list_recipes()
        width = max(len(r.name) for r in recipes)
        for recipe in recipes:
            print(f"{recipe.name:<{width}}  {recipe.description}")
        print("any binary method also takes '+cmim', e.g. rbnn+cmim")
        return 0
    from cmim_dense.engine import evaluate_checkpoint, run_pretraining
    from cmim_dense.engine.config import pretrain_config
    from cmim_dense.engine.distributed import run_command

    flags = {k: v for k, v in vars(args).items() if k not in ("list_methods", "config", "evaluate")}
    if args.evaluate:
        status, result = run_command(lambda: evaluate_checkpoint(args.evaluate, args.data, args.batch_size or 64,
                                                                 args.workers or 0))
        if result is not None:
            print(json.dumps(result))
        return status

    status, result = run_command(lambda: run_pretraining(pretrain_config(flags, args.config)))
    if result is None:
        return status
    print(f"best top-1 {100 * result['best_top1']:.1f}%; checkpoints in {result['out']}/ (best.pt, last.pt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
