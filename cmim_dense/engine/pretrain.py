"""The pretraining stage: train a (binary) ResNet classifier and write self-describing checkpoints."""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..checkpoint_io import load_checkpoint_as, save_atomic, strict_json, write_atomic
from ..cli import first_line
from ..data import ClassificationData, WithIndex, build_classification_data
from ..losses import OBJECTIVES, CMIMLoss, CMIMTerm, ObjectiveInputs
from ..losses.cmim_code import OfficialCMIMLoss
from ..models import (BinaryResNet, checkpoint_with_data, collect_taps, create_model, load_teacher,
                      model_from_checkpoint, select_sites)
from .config import CMIMSettings, PretrainConfig
from .distributed import DistributedContext, setup_distributed
from .optim import backward_step, build_optimizer, clip_latent_weights, lr_factor
from .rng import rng_state, seed_everything, set_rng_state
from .run_skeleton import (LineLog, distribute, in_owned_folder, line_log, open_run, progress, read_resumed,
                           require_divisible_batch, require_finite_loss)
from .run_state import all_finite, divergence, optimization_state, restore_optimization


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             workers: int = 0) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) and mean cross-entropy over ``dataset``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    correct1 = correct5 = loss_sum = 0.0
    count = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        count += labels.numel()
    return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss_sum / count}


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every sample's class, from the data set's own label table (no image is decoded)."""
    for name in ("targets", "labels"):
        if hasattr(dataset, name):
            return torch.as_tensor(getattr(dataset, name), dtype=torch.long)
    raise ValueError(f"{type(dataset).__name__} exposes no label table for class-aware negatives")


def evaluate_checkpoint(path: str, data: str | None = None, batch_size: int = 64, workers: int = 0) -> dict[str, Any]:
    """Top-1/top-5 of a checkpoint on the validation split of ``data`` (default: the data it was trained on)."""
    checkpoint, dataset = checkpoint_with_data(path, data)
    meta = checkpoint["meta"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_checkpoint(checkpoint, str(path)).to(device)
    metrics = evaluate(model, dataset.val, batch_size, device, workers)
    return {"checkpoint": str(path), "method": meta["method"], "arch": meta["arch"], "data": dataset.description,
            **metrics}


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
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    total_steps: int
    cmim: CMIMTerm | None = None
    teacher: BinaryResNet | None = None
    scaler: torch.amp.GradScaler | None = None
    dist: DistributedContext = field(default_factory=DistributedContext)
    network: nn.Module | None = None  # the model as trained: DDP-wrapped under torchrun, compiled by --compile
    cmim_network: nn.Module | None = None
    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

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
    return PretrainRun(config, data, model, optimizer, scheduler, device, total_steps, cmim,
                       teacher, scaler, context, network, cmim_network)


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


def train_one_epoch(run: PretrainRun, log: LineLog | None = None) -> dict[str, float]:
    """One pass over the training set in the epoch's own deterministic order, reporting to ``log``
    (progress lines; none without one)."""
    config, model, device = run.config, run.model, run.device
    model.set_progress(run.epoch / config.epochs)
    model.train()
    sampler = DistributedSampler(run.data.train, run.dist.world_size, run.dist.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    sampler.set_epoch(run.epoch)
    loader = DataLoader(WithIndex(run.data.train), config.batch_size // run.dist.world_size, sampler=sampler,
                        num_workers=config.workers, drop_last=True, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed * 100_019 + run.epoch))
    clip = run.model.recipe.training.clip_latent_weights
    seen = correct = steps = 0
    loss_sum = cmim_sum = 0.0
    cmim_value: float | None = None
    diagnostic_sums: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    bar = progress(loader, f"{config.method} epoch {run.epoch + 1}/{config.epochs}", config, run.dist)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    for images, labels, indices in bar:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
            sites = run.cmim.sites if run.cmim is not None else []
            with collect_taps(model, sites) if sites else nullcontext({}) as taps:
                outputs = objective(run, images, labels)
            loss, logits = outputs.loss, outputs.logits
            if run.cmim is not None:
                cmim_term, diagnostics = cmim_step(run, taps, outputs, indices.to(device))
                cmim_value = cmim_term.item()
                cmim_sum += cmim_value * labels.numel()
                loss = loss + cmim_term
                for key, value in diagnostics.items():  # summed on the device: read once per epoch
                    diagnostic_sums[key] = diagnostic_sums.get(key, 0.0) + value
        loss_value = loss.item()
        require_finite_loss(loss_value, f"at step {run.step} (epoch {run.epoch + 1})", run.out, INIT_FROM_HINT)
        backward_step(loss, run.optimizer, run.scaler)
        run.scheduler.step()
        if clip is not None:
            clip_latent_weights(model, clip)
        run.step += 1
        steps += 1
        seen += labels.numel()
        correct += (logits.argmax(1) == labels).sum().item()
        loss_sum += loss_value * labels.numel()
        rate = seen * run.dist.world_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
        if log is not None:
            log.update(run.step, loss_value, rate, run.optimizer.param_groups[0]["lr"], cmim_value)
        if run.step >= run.total_steps:
            break
    elapsed = time.perf_counter() - start
    diagnostics = {key: float(total) / steps for key, total in diagnostic_sums.items()}
    return {"train_loss": loss_sum / seen, "train_cmim": cmim_sum / seen, "train_top1": correct / seen,
            "images_per_s": seen * run.dist.world_size / elapsed, "epoch_time_s": elapsed, **diagnostics}


def latest_validation(history: list[dict[str, Any]]) -> dict[str, float | None]:
    """Top-1 and top-5 of the last validated epoch of ``history`` (None before the first)."""
    for record in reversed(history):
        if "val_top1" in record:
            return {"top1": record["val_top1"], "top5": record["val_top5"]}
    return {"top1": None, "top5": None}


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl, one line per finished epoch, rewritten whole (so a resumed run never duplicates)."""
    text = "".join(strict_json(record) + "\n" for record in history)
    write_atomic(path, lambda handle: handle.write(text.encode()))


def stage_configs(config: PretrainConfig) -> list[PretrainConfig]:
    """The runs ``config`` stands for: itself, or for a two-stage recipe its first stage (real
    weights, in ``out/stage1``) and its second (binary weights from the first stage's
    ``last.pt``, with the recipe's second-stage weight decay)."""
    if not config.recipe.training.two_stage or config.stage != 0:
        return [config]
    first = dataclasses.replace(config, stage=1, out=str(Path(config.out) / "stage1"))
    second = dataclasses.replace(config, stage=2, init_from=str(Path(first.out) / "last.pt"))
    if config.second_stage_weight_decay is not None:
        second = dataclasses.replace(second, weight_decay=config.second_stage_weight_decay, binary_weight_decay=None)
    return [first, second]


def run_pretraining(config: PretrainConfig) -> dict[str, Any]:
    """Train, evaluate after every ``eval_every``-th epoch and the last, and write ``last.pt``
    (everything ``--resume`` needs, after every ``save_every``-th epoch and the last), ``best.pt``
    (model and meta of the best validated epoch) and ``metrics.jsonl``.

    With ``config.resume`` a run continues from ``out/last.pt`` (model, optimizer, scheduler,
    schedules, CMIM heads and memory banks, RNG and data order) and ends with the same weights
    as an uninterrupted run; without it an existing ``last.pt`` is never overwritten.
    A two-stage recipe runs both of its :func:`stage_configs`, the result is the second's.
    """
    stages = stage_configs(config)
    if len(stages) > 1:
        return [run_pretraining(stage) for stage in stages][-1]
    context = setup_distributed()
    return in_owned_folder(config.out, context, lambda: _train_in_owned_folder(config, context))


def _train_in_owned_folder(config: PretrainConfig, context: DistributedContext) -> dict[str, Any]:
    """:func:`run_pretraining` of one stage, once rank 0 holds the output folder's lock."""
    resumed = read_resumed(config, "backbone")  # before anything is built: a refusal comes at once
    run = build_run(config, context)
    writer = open_run(run, resumed, config, context)
    main = context.is_main
    stage = f" stage {config.stage}" if config.stage else ""
    log = line_log(f"{config.method}{stage}", config, context, run.total_steps, run.step)
    while run.epoch < config.epochs and run.step < run.total_steps:
        record = {"epoch": run.epoch + 1, **train_one_epoch(run, log)}
        last = run.epoch + 1 == config.epochs or run.step >= run.total_steps
        # 4x the training batch: validation keeps no activations for a backward pass (timed in
        # docs/methods.md, the CMIM study)
        metrics = evaluate(run.model, run.data.val, 4 * config.batch_size, run.device, config.workers) \
            if last or (run.epoch + 1) % config.eval_every == 0 else None
        run.epoch += 1
        record["step"] = run.step
        if metrics is not None:
            record.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"])
        record["lr"] = run.optimizer.param_groups[0]["lr"]
        run.history.append(record)
        is_best = metrics is not None and metrics["top1"] >= run.best_top1
        run.best_top1 = max(run.best_top1, metrics["top1"]) if metrics is not None else run.best_top1
        if not ((metrics is None or np.isfinite(metrics["loss"])) and all_finite(run.model)):
            loss = "not measured" if metrics is None else metrics["loss"]
            raise divergence(f"the weights or the validation loss ({loss}) became non-finite in epoch "
                             f"{run.epoch}", run.out, INIT_FROM_HINT)
        if not main:
            continue
        save_last = last or run.epoch % config.save_every == 0
        state = run.state(latest_validation(run.history)) if save_last or is_best else {}
        if is_best:  # the backbone alone: what later stages read, a third of last.pt's size
            save_atomic({"model": state["model"], "meta": state["meta"]}, run.out / "best.pt")
        write_metrics(run.out / "metrics.jsonl", run.history)
        if save_last:  # last: a kill before it leaves an older last.pt, and --resume redoes (and rewrites) the rest
            save_atomic(state, run.out / "last.pt")
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(f"pretrain/{key}", value, run.epoch)
        writer.flush()
        cmim = f" (CMIM {record['train_cmim']:.3f})" if run.cmim is not None else ""
        validation = f"  val top-1 {100 * metrics['top1']:.1f}%  top-5 {100 * metrics['top5']:.1f}%" \
            if metrics is not None else ""
        print(f"[{config.method}{stage}] epoch {run.epoch}/{config.epochs}  loss {record['train_loss']:.3f}{cmim}"
              f"{validation}  {record['images_per_s']:.0f} img/s", flush=True)
    if writer is not None:
        writer.close()
    context.barrier()
    return {"best_top1": run.best_top1, "history": run.history, "out": str(run.out)}
