"""Fine-tuning configuration: the CMIM paper's schedule on NYUD-v2, a CPU-sized one on the built-in data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .checkpoint import result_settings
from .config import require_finite

# CMIM Sec. 4.5: lr 0.001, divided by 10 every 10K iterations (optimizer, length, batch and crop
# unstated: SGD momentum 0.9, 30K iterations = three lr levels, batch 8, full 480x640 crops).
PAPER_DEFAULTS: dict[str, Any] = {"iters": 30_000, "batch_size": 8, "crop": (480, 640), "lr": 1e-3,
                                  "lr_step": 10_000, "save_every": 1000}
# The built-in synthetic NYUD-v2 (96x128 frames): the same schedule shape, sized for 2 CPU cores:
# output stride 16 and a 64-wide DeepLabV3+ head, whose /4 decoder draws the room's edges that a
# DeepLabV3 head (a 6x8 grid of a 96x128 frame at stride 16) cannot; a larger lr for the short
# schedule, lower and longer for depth, whose L1 gradients oscillate at 1e-2.  Measured on an FP
# backbone of the built-in world (docs/nyud.md, "Fine-tuning budget on the built-in rooms"):
# segmentation mIoU 0.722 after 300 iterations, 0.737 after 600; depth RMSE 0.756 m after 600
# and after 900 iterations (DeepLabV3: mIoU 0.49, RMSE 0.84-0.90 m).
SYNTHETIC_DEFAULTS: dict[str, Any] = {"iters": 300, "batch_size": 8, "crop": (64, 96), "lr": 3e-2,
                                      "lr_step": 200, "save_every": 100, "output_stride": 16, "decoder_channels": 64,
                                      "head": "deeplabv3plus"}
SYNTHETIC_DEPTH: dict[str, Any] = {"lr": 3e-3, "iters": 600, "lr_step": 400}
TASKS = ("seg", "depth")
# Random scale range of the training augmentation.  Depth: none (the BTS/AdaBins convention);
# scaling changes apparent distance, and dividing depth by the scale (the multi-task lineage)
# cost 0.2-0.6 m of RMSE on the built-in data against crop + flip only.
TASK_SCALE = {"seg": (0.5, 2.0), "depth": (1.0, 1.0)}


@dataclass(frozen=True)
class FinetuneConfig:
    """A fully resolved fine-tuning run (stored in its checkpoints and metrics.json)."""

    task: str
    backbone: str
    data: str
    out: str
    iters: int
    batch_size: int
    crop: tuple[int, int]
    lr: float
    lr_step: int
    classes: int = 40
    head: str = "deeplabv3"
    output_stride: int = 8
    decoder_channels: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scale: tuple[float, float] = (0.5, 2.0)
    depth_loss: str = "l1"
    depth_gt: str = "depths"
    eigen_crop: bool = False
    depth_cap: float | None = None
    unfreeze: bool = False
    amp: bool = False
    seed: int = 0
    workers: int = 0
    save_every: int = 1000
    progress_bar: bool = True
    resume: bool = False

    def settings(self) -> dict[str, Any]:
        """The values that define the run's result (what ``--resume`` must match)."""
        return result_settings(self, ("progress_bar", "resume", "workers", "out", "save_every"))


def resolve_finetune_config(overrides: dict[str, Any]) -> FinetuneConfig:
    """Fill unset values (None) from the paper's schedule, or the synthetic one for ``data == "synthetic"``."""
    given = {key: value for key, value in overrides.items() if value is not None}
    for key in ("task", "backbone"):
        if key not in given:
            raise ValueError(f"--{key} is required")
    if given["task"] not in TASKS:
        raise ValueError(f"--task must be seg or depth, got {given['task']!r}")
    data = given.setdefault("data", "synthetic")
    defaults = dict(SYNTHETIC_DEFAULTS if data == "synthetic" else PAPER_DEFAULTS)
    if data == "synthetic" and given["task"] == "depth":
        defaults.update(SYNTHETIC_DEPTH)
    values = {**defaults, **given}
    values.setdefault("out", f"runs/finetune/{given['task']}")
    values["crop"] = tuple(values["crop"])
    values["scale"] = tuple(values.get("scale", TASK_SCALE[given["task"]]))
    config = FinetuneConfig(**values)
    validate_finetune(config)
    return config


def validate_finetune(config: FinetuneConfig) -> None:
    require_finite(dataclasses.asdict(config))
    if config.classes not in (40, 13):
        raise ValueError(f"--classes must be 40 or 13, got {config.classes}")
    if config.output_stride not in (8, 16):
        raise ValueError(f"--output-stride must be 8 or 16, got {config.output_stride}")
    if any(side % config.output_stride for side in config.crop):
        raise ValueError(f"--crop {config.crop[0]}x{config.crop[1]} must divide by the output stride {config.output_stride}")
    if config.batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (the ASPP image-pooling BatchNorm needs 2 samples)")
    if config.iters < 1 or config.lr <= 0 or config.lr_step < 1:
        raise ValueError("--iters, --lr and the lr step must be positive")
    if config.decoder_channels < 1:
        raise ValueError(f"--decoder-channels must be >= 1, got {config.decoder_channels}")
    if config.depth_gt not in ("depths", "rawDepths"):
        raise ValueError(f"--depth-gt must be depths or rawDepths, got {config.depth_gt!r}")
