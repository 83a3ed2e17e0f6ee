"""A pretraining run as built from its configuration: the model (and teacher), the CMIM term, the
optimizer and schedule, and what its checkpoints save and restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint_io import load_checkpoint_as
from ..cli import first_line
from ..data import ClassificationData, build_classification_data
from ..losses import OBJECTIVES, CMIMLoss, CMIMTerm
from ..losses.cmim_code import OfficialCMIMLoss
from ..models import BinaryResNet, collect_taps, create_model, load_teacher, select_sites
from .config import CMIMSettings, PretrainConfig
from .distributed import DistributedContext
from .optim import build_optimizer, lr_factor
from .rng import rng_state, seed_everything, set_rng_state
from .run_skeleton import distribute, require_divisible_batch
from .run_state import optimization_state, restore_optimization


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every sample's class, from the data set's own label table (no image is decoded)."""
    for name in ("targets", "labels"):
        if hasattr(dataset, name):
            return torch.as_tensor(getattr(dataset, name), dtype=torch.long)
    raise ValueError(f"{type(dataset).__name__} exposes no label table for class-aware negatives")


def build_cmim_loss(cmim: CMIMSettings, model: BinaryResNet, teacher: BinaryResNet | None, train: Dataset,
                    image_size: int, device: torch.device, seed: int) -> CMIMTerm:
    """The CMIM term ``cmim.variant`` names, built once: the paper's over the configured tap sites,
    or the official code's CRD between the model's and the teacher's penultimate features."""
    if cmim.variant == "code":
        if teacher is None:  # the configuration refuses it first (--teacher is required)
            raise ValueError("--cmim-variant code contrasts with a full-precision network: pass --teacher PATH")
        return OfficialCMIMLoss(model.fc.in_features, teacher.fc.in_features, len(train), dataset_labels(train),
                                n_nce=cmim.n_nce, tau=cmim.tau, lam=cmim.lam, device=device, seed=seed,
                                student_penultimate=model.penultimate,
                                teacher_penultimate=teacher.penultimate).to(device)
    sites = select_sites(model, cmim.layers)
    modules = dict(model.named_modules())
    channels = {site: modules[site].in_channels for site in sites}
    dims = None
    if cmim.embed == "none":  # the bank stores whole activations: measure them once
        with torch.no_grad(), collect_taps(model.eval(), sites) as taps:
            model(torch.zeros(2, 3, image_size, image_size, device=device))
        model.train()
        dims = {site: tap.latent[0].numel() for site, tap in taps.items()}
    labels = dataset_labels(train) if cmim.negatives == "other-class" else None
    return CMIMLoss(channels, len(train), cmim.loss_config, embed=cmim.embed, site_dims=dims,
                    bank_dtype=getattr(torch, cmim.bank_dtype), normalizer=cmim.normalizer, labels=labels,
                    device=device, seed=seed).to(device)


@dataclass
class PretrainRun:
    """Everything a pretraining run holds, and what its checkpoints save and restore."""

    config: PretrainConfig
    data: ClassificationData
    model: BinaryResNet
    network: nn.Module  # the model as trained: DDP-wrapped under torchrun, compiled by --compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None  # --amp only
    dist: DistributedContext
    total_steps: int
    teacher: BinaryResNet | None  # a recipe or --cmim-variant code that reads one
    cmim: CMIMTerm | None  # methods NAME+cmim only
    cmim_network: nn.Module | None  # the CMIM term as trained (DDP-wrapped when it has parameters)
    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def state(self, metrics: dict[str, float | None]) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "meta": {
                "method": self.config.method,
                "arch": self.config.arch,
                "num_classes": self.data.num_classes,
                "epoch": self.epoch,
                "top1": metrics["top1"],
                "top5": metrics["top5"],
                "data": self.data.description,
                "image_size": self.config.image_size,
                "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)},
                "real_weights": self.config.stage == 1,
                "recipe": self.model.recipe.to_dict(),
                "config": self.config.settings(),
            },
            **optimization_state(self.optimizer, self.scheduler, self.scaler),
            "progress": {"step": self.step, "best_top1": self.best_top1, "history": self.history},
            "rng": rng_state(),
        }
        if self.cmim is not None:
            state["cmim"] = {"heads": self.cmim.state_dict(), "banks": self.cmim.bank_state()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        restore_optimization(state, self.optimizer, self.scheduler, self.scaler)
        if self.cmim is not None:
            self.cmim.load_state_dict(state["cmim"]["heads"])
            self.cmim.load_bank_state(state["cmim"]["banks"])
        self.epoch = state["meta"]["epoch"]
        self.step = state["progress"]["step"]
        self.best_top1 = state["progress"]["best_top1"]
        self.history = list(state["progress"]["history"])
        set_rng_state(state["rng"])


# how a diverged pretraining run goes on: --resume continues only identical settings
INIT_FROM_HINT = "continue from it with a lower --lr in a new folder (--init-from {last} --lr LOWER --out NEW)"


def start_from_checkpoint(model: BinaryResNet, path: str) -> None:
    """Initialise ``model`` with the weights of a pretraining checkpoint of the same architecture
    (``--init-from``: a two-stage recipe's second stage, or a new run with other settings from a
    diverged run's last finite ``last.pt``).  Keys only one side has (a stage-1 network lacks the
    binary weight scales) keep their initial values; optimizer and CMIM state start afresh."""
    checkpoint = load_checkpoint_as(path, "backbone")
    meta = checkpoint["meta"]
    if (meta["arch"], meta["num_classes"]) != (model.arch, model.num_classes):
        raise ValueError(f"--init-from {path} holds a {meta['arch']} with {meta['num_classes']} classes; this run "
                         f"trains a {model.arch} with {model.num_classes}")
    try:
        model.load_state_dict(checkpoint["model"], strict=False)
    except RuntimeError as error:
        raise ValueError(f"--init-from {path} does not fit a {model.arch} {model.recipe.name} model "
                         f"({first_line(error)})") from None


def build_run(config: PretrainConfig, context: DistributedContext) -> PretrainRun:
    seed_everything(config.seed)
    recipe = config.recipe
    require_divisible_batch(config.batch_size, context)
    device = context.device
    data = build_classification_data(config.data, config.image_size, config.seed, config.synthetic_samples,
                                     config.synthetic_val_samples)
    model = create_model(config.arch, recipe, num_classes=data.num_classes, real_weights=config.stage == 1).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.init_from is not None:
        start_from_checkpoint(model, config.init_from)
    teacher = None
    if config.teacher is not None:
        teacher = load_teacher(config.teacher).to(device)
        if OBJECTIVES.get(recipe.training.loss).reads_teacher_logits and teacher.num_classes != data.num_classes:
            raise ValueError(
                f"teacher {config.teacher} predicts {teacher.num_classes} classes but the data has {data.num_classes}"
            )
    cmim = (build_cmim_loss(config.cmim, model, teacher, data.train, config.image_size, device, config.seed)
            if config.cmim else None)
    trained = nn.ModuleList([model] + ([cmim] if cmim is not None else []))
    optimizer = build_optimizer(trained, config.optimizer, config.lr, config.weight_decay,
                                config.binary_weight_decay, recipe.training.momentum, recipe.training.nesterov,
                                config.decay_scope)
    steps_per_epoch = len(data.train) // config.batch_size  # global batches per epoch
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {config.batch_size} exceeds the {len(data.train)} training samples")
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup = round(config.warmup_epochs * steps_per_epoch)
    milestones = tuple(round(m * steps_per_epoch) for m in config.milestones)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config.schedule, warmup, milestones)
    )
    scaler = torch.amp.GradScaler("cuda") if config.amp else None
    network = distribute(model, context, compile=config.compile)  # the CMIM loss stays eager
    cmim_network = distribute(cmim, context) if cmim is not None and any(p.requires_grad for p in cmim.parameters()) \
        else cmim
    return PretrainRun(config=config, data=data, model=model, network=network, optimizer=optimizer,
                       scheduler=scheduler, scaler=scaler, dist=context, total_steps=total_steps, teacher=teacher,
                       cmim=cmim, cmim_network=cmim_network)
