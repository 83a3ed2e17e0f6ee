"""One pretraining epoch: the epoch's batches, one optimisation step per batch (the recipe's objective,
the CMIM term, backward, schedule, weight clip), and the epoch's training record."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..data import WithIndex
from ..losses import OBJECTIVES, ObjectiveInputs
from ..models import collect_taps
from .optim import backward_step, clip_latent_weights
from .pretrain_run import INIT_FROM_HINT, PretrainRun
from .run_skeleton import LineLog, progress, require_finite_loss


@dataclass
class StepOutputs:
    loss: torch.Tensor
    logits: torch.Tensor
    features: list[torch.Tensor]
    teacher_features: list[torch.Tensor] | None


def objective(run: PretrainRun, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
    """The recipe's training objective, looked up in :data:`~cmim_dense.losses.OBJECTIVES` (the
    CMIM term is added by the caller)."""
    training = run.model.recipe.training
    logits, features = run.network(images, return_features=True)
    teacher_logits, teacher_features = None, None
    if run.teacher is not None:
        with torch.no_grad():
            teacher_logits, teacher_features = run.teacher(images, return_features=True)
    inputs = ObjectiveInputs(logits, features, labels, teacher_logits, teacher_features, run.config.label_smoothing,
                             training.distill_temperature, training.distill_weight)
    return StepOutputs(OBJECTIVES.get(training.loss).loss(inputs), logits, features, teacher_features)


def cmim_step(run: PretrainRun, taps: dict, outputs: StepOutputs,
              indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The CMIM term and its per-site diagnostics (``cmim/SITE/loss|positive|negative|log_z``; none
    for the official code's variant, which taps no site)."""
    out = run.cmim_network(taps, indices, outputs.features, outputs.teacher_features)
    diagnostics = {f"cmim/{site}/{key}": value for site, stats in out.per_layer.items() for key, value in stats.items()}
    return out.total, diagnostics


def epoch_loader(run: PretrainRun) -> DataLoader:
    """This rank's batches of the training set in the epoch's own deterministic order (images, labels,
    sample indices: the CMIM memory bank's keys)."""
    config = run.config
    sampler = DistributedSampler(run.data.train, run.dist.world_size, run.dist.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    sampler.set_epoch(run.epoch)
    return DataLoader(WithIndex(run.data.train), config.batch_size // run.dist.world_size, sampler=sampler,
                      num_workers=config.workers, drop_last=True, pin_memory=run.device.type == "cuda",
                      generator=torch.Generator().manual_seed(config.seed * 100_019 + run.epoch))


@dataclass
class StepResult:
    """What one optimisation step reports: the loss (CMIM included), the logits, the CMIM term and its
    per-site diagnostics (still on the device)."""

    loss: float
    logits: torch.Tensor
    cmim: float | None
    diagnostics: dict[str, torch.Tensor]


def train_step(run: PretrainRun, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepResult:
    """One optimisation step: the objective (and the CMIM term over the tapped sites) under autocast,
    a check that the loss is finite, backward and update, the lr schedule, the recipe's weight clip."""
    config, model = run.config, run.model
    with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
        sites = run.cmim.sites if run.cmim is not None else []
        with collect_taps(model, sites) if sites else nullcontext({}) as taps:
            outputs = objective(run, images, labels)
        loss, cmim_value, diagnostics = outputs.loss, None, {}
        if run.cmim is not None:
            cmim_term, diagnostics = cmim_step(run, taps, outputs, indices.to(run.device))
            cmim_value = cmim_term.item()
            loss = loss + cmim_term
    loss_value = loss.item()
    require_finite_loss(loss_value, f"at step {run.step} (epoch {run.epoch + 1})", run.out, INIT_FROM_HINT)
    backward_step(loss, run.optimizer, run.scaler)
    run.scheduler.step()
    clip = model.recipe.training.clip_latent_weights
    if clip is not None:
        clip_latent_weights(model, clip)
    run.step += 1
    return StepResult(loss_value, outputs.logits, cmim_value, diagnostics)


@dataclass
class EpochMeter:
    """Running sums of an epoch's steps: the training record's loss, CMIM term, top-1 and diagnostics."""

    seen: int = 0
    correct: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    cmim_sum: float = 0.0
    diagnostic_sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, result: StepResult, labels: torch.Tensor) -> None:
        count = labels.numel()
        self.steps += 1
        self.seen += count
        self.correct += (result.logits.argmax(1) == labels).sum().item()
        self.loss_sum += result.loss * count
        if result.cmim is not None:
            self.cmim_sum += result.cmim * count
        for key, value in result.diagnostics.items():  # summed on the device: read once per epoch
            self.diagnostic_sums[key] = self.diagnostic_sums.get(key, 0.0) + value

    def record(self, seconds: float, world_size: int) -> dict[str, float]:
        diagnostics = {key: float(total) / self.steps for key, total in self.diagnostic_sums.items()}
        return {"train_loss": self.loss_sum / self.seen, "train_cmim": self.cmim_sum / self.seen,
                "train_top1": self.correct / self.seen, "images_per_s": self.seen * world_size / seconds,
                "epoch_time_s": seconds, **diagnostics}


def train_one_epoch(run: PretrainRun, log: LineLog | None = None) -> dict[str, float]:
    """One pass over the training set (:func:`epoch_loader`), one :func:`train_step` per batch, reporting
    to the progress bar and ``log`` (progress lines; none without one); the epoch's training record."""
    config, device = run.config, run.device
    run.model.set_progress(run.epoch / config.epochs)
    run.model.train()
    meter, start = EpochMeter(), time.perf_counter()
    bar = progress(epoch_loader(run), f"{config.method} epoch {run.epoch + 1}/{config.epochs}", config, run.dist)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    for images, labels, indices in bar:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        result = train_step(run, images, labels, indices)
        meter.update(result, labels)
        rate = meter.seen * run.dist.world_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{meter.correct / meter.seen:.3f}", img_s=f"{rate:.0f}")
        if log is not None:
            log.update(run.step, result.loss, rate, run.optimizer.param_groups[0]["lr"], result.cmim)
        if run.step >= run.total_steps:
            break
    return meter.record(time.perf_counter() - start, run.dist.world_size)
