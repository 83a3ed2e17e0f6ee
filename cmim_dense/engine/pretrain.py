"""The pretraining stage: train a (binary) ResNet classifier and write self-describing checkpoints.

The run is built by :mod:`.pretrain_run` and its epochs trained by :mod:`.pretrain_step`; here, the
loop over epochs: validation, the history, divergence checks, the files and the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

from ..checkpoint_io import save_atomic, strict_json, write_atomic
from ..models import checkpoint_with_data, model_from_checkpoint
from .config import PretrainConfig
from .distributed import DistributedContext, setup_distributed
from .pretrain_run import INIT_FROM_HINT, PretrainRun, build_run
from .pretrain_step import train_one_epoch
from .run_skeleton import in_owned_folder, line_log, open_run, read_resumed
from .run_state import all_finite, divergence


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             workers: int = 0) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) and mean cross-entropy over ``dataset``, in eval
    mode (the model's mode is restored after)."""
    was_training = model.training
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
    model.train(was_training)
    return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss_sum / count}


def evaluate_checkpoint(path: str, data: str | None = None, batch_size: int = 64, workers: int = 0) -> dict[str, Any]:
    """Top-1/top-5 of a checkpoint on the validation split of ``data`` (default: the data it was trained on)."""
    checkpoint, dataset = checkpoint_with_data(path, data)
    meta = checkpoint["meta"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_checkpoint(checkpoint, str(path)).to(device)
    metrics = evaluate(model, dataset.val, batch_size, device, workers)
    return {"checkpoint": str(path), "method": meta["method"], "arch": meta["arch"], "data": dataset.description,
            **metrics}


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
    """:func:`run_pretraining` of one stage, once rank 0 holds the output folder's lock: epochs of
    training, each followed by its validation (when due), its record, a divergence check, and on
    rank 0 the files and the report."""
    resumed = read_resumed(config, "backbone")  # before anything is built: a refusal comes at once
    run = build_run(config, context)
    writer = open_run(run, resumed, config, context)
    log = line_log(run_name(config), config, context, run.total_steps, run.step)
    while run.epoch < config.epochs and run.step < run.total_steps:
        record = {"epoch": run.epoch + 1, **train_one_epoch(run, log)}
        last = run.epoch + 1 == config.epochs or run.step >= run.total_steps
        metrics = validate_if_due(run, last)
        is_best = close_epoch(run, record, metrics)
        if context.is_main:
            save_epoch(run, is_best, last)
            report_epoch(run, writer, record, metrics)
    if writer is not None:
        writer.close()
    context.barrier()
    return {"best_top1": run.best_top1, "history": run.history, "out": str(run.out)}


def run_name(config: PretrainConfig) -> str:
    """How progress lines name a run: its method, and its stage in a two-stage recipe."""
    return f"{config.method} stage {config.stage}" if config.stage else config.method


def validate_if_due(run: PretrainRun, last: bool) -> dict[str, float] | None:
    """Validation top-1, top-5 and loss after every ``eval_every``-th epoch and the last (None otherwise),
    in batches of 4x the training batch: validation keeps no activations for a backward pass (timed in
    docs/methods.md, the CMIM study)."""
    config = run.config
    if not (last or (run.epoch + 1) % config.eval_every == 0):
        return None
    return evaluate(run.model, run.data.val, 4 * config.batch_size, run.device, config.workers)


def close_epoch(run: PretrainRun, record: dict[str, Any], metrics: dict[str, float] | None) -> bool:
    """Count the epoch, add its record (validation and lr included) to the history, track the best
    validated epoch (returns whether this one is it), and stop with the one-line divergence error when
    the weights or the validation loss are not finite."""
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
    return is_best


def save_epoch(run: PretrainRun, is_best: bool, last: bool) -> None:
    """best.pt (the backbone alone: what later stages read, a third of last.pt's size) when the epoch is
    the best, metrics.jsonl, and last.pt after every ``save_every``-th epoch and the last (a kill before
    it leaves an older last.pt, and ``--resume`` redoes and rewrites the rest); all atomic."""
    save_last = last or run.epoch % run.config.save_every == 0
    state = run.state(latest_validation(run.history)) if save_last or is_best else {}
    if is_best:
        save_atomic({"model": state["model"], "meta": state["meta"]}, run.out / "best.pt")
    write_metrics(run.out / "metrics.jsonl", run.history)
    if save_last:
        save_atomic(state, run.out / "last.pt")


def report_epoch(run: PretrainRun, writer: SummaryWriter, record: dict[str, Any],
                 metrics: dict[str, float] | None) -> None:
    """The epoch's record to TensorBoard and one printed line."""
    for key, value in record.items():
        if key != "epoch":
            writer.add_scalar(f"pretrain/{key}", value, run.epoch)
    writer.flush()
    config = run.config
    cmim = f" (CMIM {record['train_cmim']:.3f})" if run.cmim is not None else ""
    validation = f"  val top-1 {100 * metrics['top1']:.1f}%  top-5 {100 * metrics['top5']:.1f}%" \
        if metrics is not None else ""
    print(f"[{run_name(config)}] epoch {run.epoch}/{config.epochs}  loss {record['train_loss']:.3f}{cmim}"
          f"{validation}  {record['images_per_s']:.0f} img/s", flush=True)
