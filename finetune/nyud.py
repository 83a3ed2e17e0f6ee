"""Fine-tune a dense head over a frozen (binary) backbone on NYUD-v2:
``python finetune/nyud.py --task depth --backbone runs/pretrain/rbnn/best.pt``;
``--task seg,depth,normals``: one multi-task model, a head per task over one backbone forward.

Thin entry point: parses flags and calls :func:`cmim_dense.engine.finetune.run_finetuning`.
Unset flags take the CMIM paper's schedule (SGD, lr 1e-3 divided by 10 every 10K iterations)
on real data, and a CPU-sized one on the built-in synthetic NYUD-v2 (``--data synthetic``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmim_dense.arguments import image_size, scale_range, weights  # noqa: E402  (no torch: --help answers at once)
from cmim_dense.data.nyud_meta import CLASS_COUNTS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", help="seg (semantic segmentation), depth or normals (surface normals), or a "
                        "plug-in's registered task (required); several, comma-separated (seg,depth,normals): one "
                        "multi-task model, a head per task over one backbone forward, each task's metrics in "
                        "OUT/TASK/metrics.json")
    parser.add_argument("--task-weighting", help="how a multi-task run combines its losses: fixed (default) or "
                        "uncertainty (Kendall et al. 2018, learned; docs/binary_heads.md)")
    parser.add_argument("--task-weights", type=weights, help="a multi-task run's loss weights, one per task (default "
                        "on synthetic: each task's lr over the first task's, e.g. 1,0.1,10; else 1 each); the "
                        "starting weights of --task-weighting uncertainty")
    parser.add_argument("--backbone", help="a checkpoint of pretrain/run.py (best.pt or last.pt) or of python -m "
                        "cmim_dense.convert, or a torchvision/timm ResNet-18/34 state dict (required)")
    parser.add_argument("--evaluate", metavar="HEAD_CKPT", help="only evaluate a fine-tuned last.pt (writes metrics.json)")
    parser.add_argument("--config", help="YAML file of flag values, or a run's config.json, which recreates that run; "
                        "flags given beside it replace its values")
    parser.add_argument("--data", help="'synthetic' (built-in, default) or a layout of datasets/prepare_nyud.py")
    parser.add_argument("--classes", type=int, choices=CLASS_COUNTS, help="segmentation classes (default 40)")
    parser.add_argument("--head", help="deeplabv3 (default), deeplabv3plus (default on synthetic), fpn or unet")
    parser.add_argument("--output-stride", type=int,
                        help="8 (default) or 16 for the DeepLab heads (16 on synthetic); 32 for fpn and unet, their only "
                             "one")
    parser.add_argument("--decoder-channels", type=int, help="decoder width (default 256; 64 on synthetic)")
    parser.add_argument("--iters", type=int, help="iterations (default 30000; synthetic: 300 seg, 600 depth, normals)")
    parser.add_argument("--batch-size", type=int, help="global batch (default 8)")
    parser.add_argument("--crop", type=image_size, help="training crop HxW (default 480x640; 64x96 on synthetic)")
    parser.add_argument("--scale", type=scale_range, help="random scale range MIN,MAX (default 0.5,2 seg; 1,1 depth)")
    parser.add_argument("--lr", type=float, help="default 1e-3 (synthetic: 3e-2 seg, 3e-3 depth)")
    parser.add_argument("--lr-step", type=int, help="divide the lr by 10 every this many iterations "
                        "(default 10000; synthetic: 200 seg, 400 depth)")
    parser.add_argument("--weight-decay", type=float, help="default 1e-4")
    parser.add_argument("--depth-loss", help="depth loss on valid pixels: l1 (default) or berhu")
    parser.add_argument("--depth-gt", help="ground-truth depth: depths (filled, default) or rawDepths")
    parser.add_argument("--eigen-crop", action="store_true", default=None, help="evaluate depth inside the Eigen crop")
    parser.add_argument("--depth-cap", type=float, help="evaluate depth only where ground truth <= this (metres)")
    parser.add_argument("--unfreeze", action="store_true", default=None, help="train the backbone too")
    parser.add_argument("--binary-head", metavar="METHOD",
                        help="binarize the head's 3x3 convolutions with a binary method's recipe (e.g. irnet; "
                             "real shortcuts, 1x1 and output convs full precision: docs/binary_heads.md)")
    parser.add_argument("--head-teacher", metavar="LAST_PT",
                        help="also distil from this fine-tuned model (same task(s), same backbone; e.g. the "
                             "full-precision head of a binary one): each task's loss plus the weighted distance to "
                             "its outputs on every pixel (KL for seg, L1 for depth, 1 - cos for normals)")
    parser.add_argument("--head-teacher-weight", type=float, help="the distillation loss's weight (default 1)")
    parser.add_argument("--amp", action="store_true", default=None, help="float16 autocast + GradScaler (CUDA)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the dense network for the training iterations (TorchInductor; the "
                             "first iterations compile, the results are the same to float rounding)")
    parser.add_argument("--no-packed-backbone", dest="packed_backbone", action="store_false", default=None,
                        help="run the frozen binary backbone in float on a CPU too (default: on the packed 1-bit "
                             "kernel, the same features up to sign ties, docs/export.md; GPUs and --unfreeze always "
                             "use float)")
    parser.add_argument("--save-every", type=int, help="write last.pt every this many iterations")
    parser.add_argument("--eval-every", type=int, metavar="N",
                        help="also evaluate on the test split every N iterations, to TensorBoard and a line "
                             "(default 0: at the end only); it changes nothing in training")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out", help="output folder (default runs/finetune/BACKBONE-HASH/TASK: named after the "
                        "backbone, so two backbones never share one)")
    parser.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    parser.add_argument("--log-every", type=float, metavar="SECONDS",
                        help="where no progress bar is drawn (output not a terminal), a progress line every this "
                             "many seconds (default 30; 0: none)")
    parser.add_argument("--no-progress", dest="progress_bar", action="store_false", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cmim_dense.dense import get_task  # torch loads here, after --help and the argument checks
    from cmim_dense.engine.distributed import run_command
    from cmim_dense.engine.finetune import evaluate_head_checkpoint, run_finetuning
    from cmim_dense.engine.finetune_config import finetune_config

    def finetune() -> dict:
        if args.evaluate:
            return evaluate_head_checkpoint(args.evaluate, args.data, args.out, args.packed_backbone is not False)
        flags = {k: v for k, v in vars(args).items() if k not in ("evaluate", "config")}
        return run_finetuning(finetune_config(flags, args.config))

    status, result = run_command(finetune)
    if result is None:
        return status
    for record in result["records"].values() if "records" in result else [result]:  # a multi-task run: each task
        keys = get_task(record["task"]).printed
        print(json.dumps({"task": record["task"], "method": record["method"],
                          **{k: round(record[k], 4) for k in keys}, "baseline": record["baseline"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
