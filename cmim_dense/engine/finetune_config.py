"""Fine-tuning configuration: the CMIM paper's schedule on NYUD-v2, a CPU-sized one on the built-in data."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.nyud_meta import DEPTH_KINDS, require_class_count
from ..dense import DEPTH_LOSSES, HEADS, get_task
from ..dense.binary_head import binary_head_recipe
from ..dense.multitask import TASK_WEIGHTINGS
from .config import read_config_file, require_finite, require_seed
from .run_state import build_config, result_settings, volatile

# CMIM Sec. 4.5: lr 0.001, divided by 10 every 10K iterations (optimizer, length, batch and crop
# unstated: SGD momentum 0.9, 30K iterations = three lr levels, batch 8, full 480x640 crops).
PAPER_DEFAULTS: dict[str, Any] = {"iters": 30_000, "batch_size": 8, "crop": (480, 640), "lr": 1e-3,
                                  "lr_step": 10_000, "save_every": 1000}
# The built-in synthetic NYUD-v2 (96x128 frames): the same schedule shape, sized for 2 CPU cores,
# with a 64-wide DeepLabV3+ head at stride 16, whose /4 decoder draws the room's edges (why, and
# the measured budget: docs/nyud.md, "Fine-tuning budget on the built-in rooms").
SYNTHETIC_DEFAULTS: dict[str, Any] = {"iters": 300, "batch_size": 8, "crop": (64, 96), "lr": 3e-2,
                                      "lr_step": 200, "save_every": 100, "output_stride": 16, "decoder_channels": 64,
                                      "head": "deeplabv3plus"}
# Each task overrides some of these (DenseTask.synthetic_schedule) and brings its random-scale
# range (DenseTask.scale; none for depth, whose apparent distance scaling would change: docs/nyud.md).
MAX_DECODER_CHANNELS = 4096  # 16x the paper's 256; beyond, a head's weights alone run into gigabytes


@dataclass(frozen=True)
class FinetuneConfig:
    """A fully resolved fine-tuning run (stored in its checkpoints and metrics.json).

    ``task``: one task's name, or several joined by commas for one multi-task model (one backbone
    forward, a head per task: dense/multitask.py), whose losses combine by ``task_weighting``
    ("fixed" or "uncertainty", from ``task_weights``, one per task); both are None for one task."""

    task: str
    backbone: str
    data: str
    out: str = volatile()
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
    binary_head: str | None = None  # a binary method whose recipe binarizes the head's 3x3 convs (dense/binary_head.py)
    task_weighting: str | None = None
    task_weights: tuple[float, ...] | None = None
    head_teacher: str | None = None  # a fine-tuned last.pt of the same task(s) over the same backbone to distil from
    head_teacher_weight: float = 1.0  # the distillation loss's weight beside each task loss
    amp: bool = False
    compile: bool = volatile(False)  # torch.compile the training network
    # a frozen binary backbone runs on the packed XNOR-popcount kernel on a CPU: the same features up
    # to float rounding and sign ties (docs/export.md), so, like the thread count, not a result setting
    packed_backbone: bool = volatile(True)
    seed: int = 0
    workers: int = volatile(0)
    save_every: int = volatile(1000)
    eval_every: int = volatile(0)  # evaluate on the test split every N iterations during the run (0: at the end only)
    progress_bar: bool = volatile(True)
    log_every: float = volatile(30.0)  # seconds between progress lines where no bar is drawn; 0: none
    resume: bool = volatile(False)

    def settings(self) -> dict[str, Any]:
        """The values that define the run's result (what ``--resume`` must match)."""
        return result_settings(self)

    @property
    def task_names(self) -> tuple[str, ...]:
        """The task(s) trained: one, or the heads of a multi-task model in ``--task``'s order."""
        return tuple(self.task.split(","))

    @property
    def multi_task(self) -> bool:
        return len(self.task_names) > 1


def backbone_folder_name(backbone: str) -> str:
    """A run-folder name for a backbone file: its folder's name for pretrain/run.py's best.pt and
    last.pt, else its file name, with 6 hex digits of its absolute path so that two backbones never
    share a folder (runs/a/irnet/best.pt -> irnet-3f2a1c)."""
    path = Path(backbone).expanduser().resolve()
    name = path.parent.name if path.name in ("best.pt", "last.pt") else path.name.split(".")[0]
    return f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


def finetune_config(flags: dict[str, Any], config_file: str | Path | None = None) -> FinetuneConfig:
    """The run of ``finetune/nyud.py``: its ``flags`` (None: not given) over ``config_file``, a YAML of
    flag values or a run's own ``config.json`` (every resolved value: it recreates that run)."""
    fields = set(FinetuneConfig.__dataclass_fields__)
    values = read_config_file(config_file, set(flags) | fields) if config_file is not None else {}
    values.update({key: value for key, value in flags.items() if value is not None})
    return resolve_finetune_config(values)


def resolve_finetune_config(overrides: dict[str, Any]) -> FinetuneConfig:
    """Fill unset values (None) from the paper's schedule, or the synthetic one for ``data == "synthetic"``.

    Several tasks (``seg,depth,normals``) train on one schedule: the longest of their synthetic
    schedules (iterations and lr step) at the first task's lr, the others' lrs reached through their
    default fixed weights (lr_t / lr_first: with a frozen backbone a task's weight only scales its
    own head's gradient; ``--lr`` scales them all), and the random-scale range all the tasks allow (none when depth is one)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    for key in ("task", "backbone"):
        if key not in given:
            raise ValueError(f"--{key} is required")
    tasks = [get_task(name.strip()) for name in str(given["task"]).split(",")]
    given["task"] = ",".join(task.name for task in tasks)
    data = given.setdefault("data", "synthetic")
    schedules = [{**(SYNTHETIC_DEFAULTS if data == "synthetic" else PAPER_DEFAULTS),
                  **(task.synthetic_schedule if data == "synthetic" else {})} for task in tasks]
    defaults = dict(max(schedules, key=lambda schedule: schedule["iters"]), lr=schedules[0]["lr"])
    head = HEADS.get(given.get("head", defaults.get("head", FinetuneConfig.head)))
    if defaults.get("output_stride", FinetuneConfig.output_stride) not in head.output_strides:
        defaults["output_stride"] = head.output_strides[0]  # e.g. FPN and U-Net: 32
    if len(tasks) > 1:
        defaults["task_weighting"] = "fixed"
        defaults["task_weights"] = tuple(schedule["lr"] / defaults["lr"] for schedule in schedules)
    scale = (max(task.scale[0] for task in tasks), min(task.scale[1] for task in tasks))
    folder = "+".join(task.name for task in tasks)
    if given.get("binary_head") is not None:
        folder += f"-binary_head_{given['binary_head']}"
    if given.get("head_teacher") is not None:
        folder += "-distilled"
    values = {"out": f"runs/finetune/{backbone_folder_name(given['backbone'])}/{folder}", "scale": scale,
              **defaults, **given}
    config = build_config(FinetuneConfig, values)
    validate_finetune(config)
    return config


def validate_finetune(config: FinetuneConfig) -> None:
    require_finite(dataclasses.asdict(config))
    require_seed(config.seed)
    require_class_count(config.classes)
    strides = HEADS.get(config.head).output_strides
    if config.output_stride not in strides:
        raise ValueError(f"--output-stride of the {config.head} head must be {' or '.join(map(str, strides))}, "
                         f"got {config.output_stride}")
    if any(side % config.output_stride for side in config.crop):
        raise ValueError(f"--crop {config.crop[0]}x{config.crop[1]} must divide by the output stride {config.output_stride}")
    if config.batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (the ASPP image-pooling BatchNorm needs 2 samples)")
    if config.iters < 1 or config.lr <= 0 or config.lr_step < 1:
        raise ValueError("--iters, --lr and the lr step must be positive")
    if not 1 <= config.decoder_channels <= MAX_DECODER_CHANNELS:
        raise ValueError(f"--decoder-channels must be between 1 and {MAX_DECODER_CHANNELS} (the paper's head: 256), "
                         f"got {config.decoder_channels}")
    if config.save_every < 1:
        raise ValueError(f"--save-every must be >= 1, got {config.save_every}")
    if config.eval_every < 0:
        raise ValueError(f"--eval-every must be >= 0 (0: evaluate at the end only), got {config.eval_every}")
    if config.log_every < 0:
        raise ValueError(f"--log-every must be >= 0 seconds, got {config.log_every}")
    if config.depth_cap is not None and config.depth_cap <= 0:
        raise ValueError(f"--depth-cap must be > 0 metres, got {config.depth_cap}")
    if config.depth_gt not in DEPTH_KINDS:
        raise ValueError(f"--depth-gt must be {' or '.join(DEPTH_KINDS)}, got {config.depth_gt!r}")
    DEPTH_LOSSES.get(config.depth_loss)  # the registry's one-line error for an unknown name
    if config.binary_head is not None:
        binary_head_recipe(config.binary_head)
    if config.head_teacher_weight <= 0:
        raise ValueError(f"--head-teacher-weight must be > 0, got {config.head_teacher_weight}")
    validate_tasks(config)


def validate_tasks(config: FinetuneConfig) -> None:
    """One line for a repeated task, weights that do not fit the tasks, or a weighting of one task."""
    names = config.task_names
    if len(set(names)) < len(names):
        raise ValueError(f"--task names a task more than once: {config.task}")
    if not config.multi_task:
        if config.task_weighting is not None or config.task_weights is not None:
            raise ValueError("--task-weighting and --task-weights combine several tasks; give --task a comma list "
                             "(seg,depth,normals) or drop them")
        return
    TASK_WEIGHTINGS.get(config.task_weighting)  # the registry's one-line error for an unknown name
    if config.task_weights is None or len(config.task_weights) != len(names):
        raise ValueError(f"--task-weights needs one weight per task ({len(names)}: {config.task}), "
                         f"got {config.task_weights}")
    if not all(weight > 0 for weight in config.task_weights):
        raise ValueError(f"--task-weights must be positive, got {config.task_weights}")
