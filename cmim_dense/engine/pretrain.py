"""The pretraining stage: train a (binary) ResNet classifier and write self-describing checkpoints."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from ..data import ClassificationData, WithIndex, build_classification_data
from ..losses import CMIMLoss
from ..methods import CMIMConfig, Recipe, get_recipe
from ..models import BinaryResNet, collect_taps, create_model, select_sites
from .checkpoint import save_atomic
from .optim import build_optimizer, clip_latent_weights, lr_factor

SYNTHETIC_DEFAULTS = {"epochs": 8, "batch_size": 64, "image_size": 48, "cmim_nce_n": 256}


@dataclass(frozen=True)
class PretrainConfig:
    """A fully resolved pretraining run (every value explicit, stored in the checkpoints)."""

    method: str
    arch: str
    data: str
    out: str
    epochs: int
    batch_size: int
    image_size: int
    lr: float
    optimizer: str
    weight_decay: float
    binary_weight_decay: float | None
    schedule: str
    warmup_epochs: float
    milestones: tuple[float, ...]
    label_smoothing: float
    cmim: dict[str, Any] | None = None
    seed: int = 0
    workers: int = 0
    max_steps: int | None = None
    progress_bar: bool = True


def resolve_config(method: str, overrides: dict[str, Any]) -> PretrainConfig:
    """Fill every unset value from the method's recipe (``overrides`` values of None are unset).

    The recipe's schedule shape is kept when the budget changes: warm-up and step
    milestones are scaled by epochs / recipe epochs, and the learning rate by
    batch size / recipe batch size (linear scaling rule) unless ``lr`` is given.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    data = given.get("data", "synthetic")
    recipe = get_recipe(method, cmim_config(given, data) if "+cmim" in method.lower() else None)
    train = recipe.training
    defaults = SYNTHETIC_DEFAULTS if data == "synthetic" else {
        "epochs": train.epochs, "batch_size": train.batch_size, "image_size": 224
    }
    epochs = int(given.get("epochs", defaults["epochs"]))
    batch_size = int(given.get("batch_size", defaults["batch_size"]))
    budget = epochs / train.epochs
    config = PretrainConfig(
        method=recipe.name,
        arch=given.get("arch", "resnet18"),
        data=data,
        out=given.get("out", f"runs/pretrain/{recipe.name}"),
        epochs=epochs,
        batch_size=batch_size,
        image_size=int(given.get("image_size", defaults["image_size"])),
        lr=float(given.get("lr", train.lr * batch_size / train.batch_size)),
        optimizer=given.get("optimizer", train.optimizer),
        weight_decay=float(given.get("weight_decay", train.weight_decay)),
        binary_weight_decay=train.binary_weight_decay if "weight_decay" not in given else None,
        schedule=given.get("schedule", train.schedule),
        warmup_epochs=float(given.get("warmup", train.warmup_epochs * budget)),
        milestones=tuple(m * budget for m in train.milestones),
        label_smoothing=train.label_smoothing,
        cmim=dict(dataclasses.asdict(recipe.cmim), embed=given.get("cmim_embed", "mlp")) if recipe.cmim else None,
        seed=int(given.get("seed", 0)),
        workers=int(given.get("workers", 0 if data == "synthetic" else 4)),
        max_steps=given.get("max_steps"),
        progress_bar=bool(given.get("progress_bar", True)),
    )
    validate(config, recipe)
    return config


def cmim_config(given: dict[str, Any], data: str) -> CMIMConfig:
    """CMIM hyper-parameters from ``cmim_*`` overrides; the built-in data defaults to fewer negatives."""
    defaults = CMIMConfig()
    n_nce = given.get("cmim_nce_n", SYNTHETIC_DEFAULTS["cmim_nce_n"] if data == "synthetic" else defaults.n_nce)
    return CMIMConfig(
        lam=float(given.get("cmim_lambda", defaults.lam)),
        beta=float(given.get("cmim_beta", defaults.beta)),
        tau=float(given.get("cmim_tau", defaults.tau)),
        n_nce=int(n_nce),
        layers=given.get("cmim_layers", defaults.layers),
    )


def build_cmim_loss(config: PretrainConfig, model: BinaryResNet, dataset_size: int,
                    device: torch.device) -> tuple[CMIMLoss, list[str]]:
    """The CMIM loss over the configured tap sites (channels read from the model)."""
    assert config.cmim is not None
    settings = {k: v for k, v in config.cmim.items() if k != "embed"}
    sites = select_sites(model, settings["layers"])
    modules = dict(model.named_modules())
    channels = {site: modules[site].in_channels for site in sites}
    dims = None
    if config.cmim["embed"] == "none":  # the bank stores whole activations: measure them once
        was_training = model.training
        with torch.no_grad(), collect_taps(model.eval(), sites) as taps:
            model(torch.zeros(2, 3, config.image_size, config.image_size, device=device))
        model.train(was_training)
        dims = {site: tap.latent[0].numel() for site, tap in taps.items()}
    loss = CMIMLoss(channels, dataset_size, CMIMConfig(**settings), embed=config.cmim["embed"],
                    site_dims=dims, device=device, seed=config.seed).to(device)
    return loss, sites


def validate(config: PretrainConfig, recipe: Recipe) -> None:
    """One-line errors for values out of range and for objectives not available here."""
    checks = [
        (config.epochs >= 1, f"--epochs must be >= 1, got {config.epochs}"),
        (config.batch_size >= 2, f"--batch-size must be >= 2 (BatchNorm), got {config.batch_size}"),
        (config.image_size >= 16, f"--image-size must be >= 16, got {config.image_size}"),
        (config.lr > 0, f"--lr must be > 0, got {config.lr}"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (config.warmup_epochs >= 0, f"--warmup must be >= 0, got {config.warmup_epochs}"),
        (config.workers >= 0, f"--workers must be >= 0, got {config.workers}"),
        (config.max_steps is None or config.max_steps >= 1, f"--max-steps must be >= 1, got {config.max_steps}"),
        (config.optimizer in ("sgd", "adam"), f"--optimizer must be sgd or adam, got {config.optimizer!r}"),
        (config.schedule in ("cos", "step", "linear"), f"--schedule must be cos, step or linear, got {config.schedule!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if recipe.training.loss != "ce":
        raise ValueError(
            f"method {recipe.name!r} trains with loss {recipe.training.loss!r} from a teacher, which this version "
            "of pretrain/run.py cannot run yet; choose fp, bnn, xnor, xnorpp, bireal, irnet or rbnn (+cmim)"
        )
    if config.cmim is not None and config.cmim["embed"] not in ("mlp", "none"):
        raise ValueError(f"--cmim-embed must be mlp or none, got {config.cmim['embed']!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, workers: int = 0) -> dict[str, float]:
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


def checkpoint_meta(config: PretrainConfig, model: BinaryResNet, data: ClassificationData, epoch: int,
                    metrics: dict[str, float]) -> dict[str, Any]:
    """Everything a later stage needs to rebuild and judge the backbone from the file alone."""
    return {
        "method": config.method,
        "arch": config.arch,
        "num_classes": data.num_classes,
        "epoch": epoch,
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "data": data.description,
        "image_size": config.image_size,
        "recipe": model.recipe.to_dict(),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
    }


def run_pretraining(config: PretrainConfig) -> dict[str, Any]:
    """Train, evaluate after every epoch, and write ``last.pt``, ``best.pt`` and ``metrics.jsonl``."""
    seed_everything(config.seed)
    recipe = get_recipe(config.method)
    validate(config, recipe)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = build_classification_data(config.data, config.image_size, config.seed)
    model = create_model(config.arch, config.method, num_classes=data.num_classes).to(device)
    cmim_loss, sites = build_cmim_loss(config, model, len(data.train), device) if config.cmim else (None, [])
    trained = nn.ModuleList([model] + ([cmim_loss] if cmim_loss is not None else []))
    optimizer = build_optimizer(
        trained, config.optimizer, config.lr, config.weight_decay, config.binary_weight_decay,
        recipe.training.momentum, recipe.training.nesterov,
    )
    steps_per_epoch = len(data.train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {config.batch_size} exceeds the {len(data.train)} training samples")
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    milestones = tuple(round(m * steps_per_epoch) for m in config.milestones)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config.schedule, warmup_steps, milestones)
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    clip = recipe.training.clip_latent_weights

    step, best, history = 0, -1.0, []
    for epoch in range(config.epochs):
        if step >= total_steps:
            break
        model.set_progress(epoch / config.epochs)
        model.train()
        sampler = RandomSampler(data.train, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        loader = DataLoader(WithIndex(data.train), config.batch_size, sampler=sampler, num_workers=config.workers,
                            drop_last=True, pin_memory=device.type == "cuda")
        seen = correct = 0
        loss_sum = cmim_sum = 0.0
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"{config.method} epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=None if config.progress_bar else True, mininterval=1.0)
        for images, labels, indices in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with collect_taps(model, sites) if cmim_loss is not None else nullcontext({}) as taps:
                logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            if cmim_loss is not None:
                cmim_term = cmim_loss(taps, indices.to(device)).total
                cmim_sum += cmim_term.item() * labels.numel()
                loss = loss + cmim_term
            loss_value = loss.item()
            if not np.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at step {step} (epoch {epoch + 1}); "
                    f"the last good checkpoint is {out / 'last.pt'}; lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if clip is not None:
                clip_latent_weights(model, clip)
            step += 1
            seen += labels.numel()
            correct += (logits.argmax(1) == labels).sum().item()
            loss_sum += loss_value * labels.numel()
            bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
            if step >= total_steps:
                break
        elapsed = time.perf_counter() - start
        metrics = evaluate(model, data.val, config.batch_size, device, config.workers)
        record = {
            "epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen, "train_cmim": cmim_sum / seen,
            "train_top1": correct / seen,
            "val_top1": metrics["top1"], "val_top5": metrics["top5"], "val_loss": metrics["loss"],
            "lr": optimizer.param_groups[1]["lr"], "images_per_s": seen / elapsed, "epoch_time_s": elapsed,
        }
        history.append(record)
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        state = {
            "model": model.state_dict(),
            "meta": checkpoint_meta(config, model, data, epoch + 1, metrics),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
        }
        if cmim_loss is not None:
            state["cmim"] = {"heads": cmim_loss.state_dict(), "banks": cmim_loss.bank_state()}
        save_atomic(state, out / "last.pt")
        if metrics["top1"] >= best:
            best = metrics["top1"]
            save_atomic(state, out / "best.pt")
        print(f"[{config.method}] epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.3f}  "
              f"val top-1 {100 * metrics['top1']:.1f}%  top-5 {100 * metrics['top5']:.1f}%  "
              f"{record['images_per_s']:.0f} img/s", flush=True)
    return {"best_top1": best, "history": history, "out": str(out)}
