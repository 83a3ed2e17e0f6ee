"""Frozen-backbone fine-tuning on NYUD-v2 for any registered dense task (or several, one multi-task
model), and its evaluation.

The data path: a pretraining checkpoint -> :func:`dense_model_from_backbone` -> iterations of
SGD on the head(s) -> ``last.pt`` (atomic, every ``save_every`` iterations) -> evaluation on the
whole test split at full resolution -> ``metrics.json`` (a multi-task run: ``TASK/metrics.json``
per task, each as a single-task run writes it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.tensorboard import SummaryWriter

from ..binary import set_progress
from ..checkpoint_io import save_atomic, write_json
from ..data.nyud import NYUDv2
from ..data.nyud_source import nyud_root
from ..dense import (DenseTask, dense_model_from_backbone, dense_model_from_checkpoint, evaluate_constant, get_task,
                     head_parameters)
from ..dense.loading import TaskData, head_teacher, open_task_data, task_data_of
from ..dense.multitask import TASK_WEIGHTINGS, FixedWeighting, TaskWeighting, decoders, output_layers, task_outputs
from ..dense.tasks import TaskSettings
from .distributed import DistributedContext, setup_distributed
from .finetune_config import FinetuneConfig, resolve_finetune_config
from .optim import backward_step
from .rng import rng_state, seed_everything, set_rng_state
from .run_skeleton import (distribute, in_owned_folder, line_log, open_run, progress, read_resumed,
                           require_divisible_batch, require_finite_loss)
from .run_state import all_finite, divergence, optimization_state, restore_optimization


def iteration_batches(size: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                      world_size: int = 1) -> Iterator[list[tuple[int, int]]]:
    """Global batches ``start..stop-1`` of an endless sequence of seeded epoch permutations
    (incomplete last batches dropped), this rank's share of each: (index, sample seed) pairs."""
    per_epoch = size // batch_size
    if per_epoch == 0:
        raise ValueError(f"--batch-size {batch_size} exceeds the {size} training frames")
    for step in range(start, stop):
        epoch, position = divmod(step, per_epoch)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        batch = order[position * batch_size:(position + 1) * batch_size].tolist()
        seeds = [(seed * 1_000_003 + epoch) * 65_537 + position * batch_size + k for k in range(batch_size)]
        yield list(zip(batch, seeds))[rank::world_size]


@dataclass
class FinetuneRun:
    """Everything a fine-tuning run holds, and what its checkpoints save and restore."""

    config: FinetuneConfig
    tasks: tuple[DenseTask, ...]  # one, or the multi-task model's
    weighting: TaskWeighting  # how the task losses combine (one task: weight 1)
    model: nn.Module
    network: nn.Module
    backbone: dict[str, Any]  # its identity (dense.loading.backbone_identity)
    data: TaskData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    dist: DistributedContext
    teacher: nn.Module | None  # --head-teacher: the frozen fine-tuned model whose outputs the heads also learn
    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def meta(self) -> dict[str, Any]:
        """What rebuilds the dense model from the head checkpoint alone."""
        return {"task": self.config.task, "classes": self.config.classes,
                "out_channels": head_outputs(self.config, self.tasks),
                "head": self.config.head, "output_stride": self.config.output_stride,
                "decoder_channels": self.config.decoder_channels, "binary_head": self.config.binary_head,
                "backbone": str(Path(self.config.backbone).resolve()),
                "backbone_meta": self.backbone, "iteration": self.iteration,
                "config": self.config.settings()}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "weighting": self.weighting.state_dict(), "meta": self.meta(),
                **optimization_state(self.optimizer, self.scheduler, self.scaler),
                "history": self.history, "rng": rng_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if "weighting" in state:  # written since multi-task runs (a single task's is constant)
            self.weighting.load_state_dict(state["weighting"])
        restore_optimization(state, self.optimizer, self.scheduler, self.scaler)
        self.iteration = state["meta"]["iteration"]
        self.history = list(state["history"])
        set_rng_state(state["rng"])


def head_outputs(config: FinetuneConfig, tasks: Sequence[DenseTask]) -> int | dict[str, int]:
    """The output channels of the run's head: one task's count, or task name -> count for a multi-task model."""
    channels = {task.name: task.out_channels(config) for task in tasks}
    return channels if config.multi_task else channels[config.task]


def metrics_paths(out: str | Path, task: str) -> dict[str, Path]:
    """Task name -> where a fine-tuning run in ``out`` writes that task's metrics.json: ``out/metrics.json``
    for one task, ``out/TASK/metrics.json`` for each task of a multi-task run (``task`` comma-separated)."""
    names = task.split(",")
    return {name: Path(out) / (name if len(names) > 1 else "") / "metrics.json" for name in names}


def build_finetune_run(config: FinetuneConfig, context: DistributedContext) -> FinetuneRun:
    seed_everything(config.seed)
    tasks = tuple(get_task(name) for name in config.task_names)
    require_divisible_batch(config.batch_size, context)
    out_channels = head_outputs(config, tasks)
    model, backbone = dense_model_from_backbone(config.backbone, out_channels, config.head, config.output_stride,
                                                config.decoder_channels, freeze=not config.unfreeze,
                                                binary_head=config.binary_head)
    teacher = (head_teacher(config.head_teacher, config.task, out_channels, config.backbone)
               if config.head_teacher is not None else None)
    # rank 0 renders/prepares the built-in data (with its progress shown) while the others wait
    root = context.main_first(lambda first: nyud_root(config.data, progress=first and config.progress_bar))
    data = open_task_data(root, tasks, config.classes, config.depth_gt, backbone)
    layers = output_layers(model, tasks)
    for task in tasks:
        task.initialise_head(layers[task.name].bias, data.train)
    model.encoder.packed_inference = config.packed_backbone
    if teacher is not None:
        teacher.encoder.packed_inference = config.packed_backbone
        teacher.to(context.device)
    weighting = (TASK_WEIGHTINGS.get(config.task_weighting)(tasks, config.task_weights) if config.multi_task
                 else FixedWeighting(tasks, [1.0]))
    model.to(context.device)
    weighting.to(context.device)
    groups = [{"params": head_parameters(model)}]
    learned_weights = list(weighting.parameters())  # uncertainty weighting's log-variances, not decayed
    if learned_weights:
        groups.append({"params": learned_weights, "weight_decay": 0.0})
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.1 ** (it // config.lr_step))
    scaler = torch.amp.GradScaler("cuda") if config.amp else None
    network = distribute(model, context, compile=config.compile)
    return FinetuneRun(config, tasks, weighting, model, network, backbone, data, optimizer, scheduler, scaler,
                       context, teacher)


# a fine-tune is short: a diverged one starts again (its last.pt stays for --evaluate)
RESTART_HINT = "start again with a lower --lr in a new folder (--out NEW)"


def train_iterations(run: FinetuneRun, writer: SummaryWriter | None) -> None:
    """Iterations ``run.iteration .. config.iters - 1``, with an atomic ``last.pt`` every ``save_every``."""
    config, device = run.config, run.dist.device
    samples = run.data.training_samples(config.crop, config.scale)
    batches = iteration_batches(len(samples), config.batch_size, config.seed, run.iteration, config.iters,
                                run.dist.rank, run.dist.world_size)
    # a private generator: creating the loader must not draw from the global RNG (dropout's), or a
    # resumed run would see a shifted random stream
    loader = DataLoader(samples, batch_sampler=list(batches), num_workers=config.workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    run.network.train()
    bar = progress(loader, f"{config.task} fine-tune", config, run.dist, total=config.iters, initial=run.iteration)
    log = line_log(f"{config.task} fine-tune", config, run.dist, config.iters, run.iteration)
    start, seen = time.perf_counter(), 0
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        for decoder in decoders(run.model):  # a binary head's estimator schedules
            set_progress(decoder, run.iteration / config.iters)
        with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
            outputs = task_outputs(run.network(batch["image"]), run.tasks)
            losses = {task.name: task.loss(outputs[task.name], batch[task.target], config) for task in run.tasks}
            distillation = distillation_losses(run, batch["image"], outputs)
            loss = run.weighting({name: losses[name] + config.head_teacher_weight * distillation[name]
                                  for name in losses} if distillation else losses)
        value = loss.item()
        require_finite_loss(value, f"at iteration {run.iteration}", run.out, RESTART_HINT)
        backward_step(loss, run.optimizer, run.scaler)
        run.scheduler.step()
        run.iteration += 1
        seen += batch["image"].shape[0] * run.dist.world_size
        rate = seen / (time.perf_counter() - start)
        lr = run.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{value:.3f}", img_s=f"{rate:.1f}")
        log.update(run.iteration, value, rate, lr)
        entry = {"iteration": run.iteration, "loss": value, "lr": lr, "images_per_s": rate}
        if config.multi_task:
            entry.update(task_losses={name: part.item() for name, part in losses.items()},
                         task_weights=run.weighting.weights())
        if distillation:
            entry["distillation_losses"] = {name: part.item() for name, part in distillation.items()}
        run.history.append(entry)
        if writer is not None:
            writer.add_scalar(f"finetune/{config.task}_loss", value, run.iteration)
            writer.add_scalar("finetune/lr", lr, run.iteration)
            for name in entry.get("task_losses", {}):
                writer.add_scalar(f"finetune/{name}_task_loss", entry["task_losses"][name], run.iteration)
                writer.add_scalar(f"finetune/{name}_task_weight", entry["task_weights"][name], run.iteration)
        if config.eval_every and run.iteration % config.eval_every == 0 and run.iteration < config.iters:
            evaluate_during_training(run, writer)
        if run.iteration % config.save_every == 0 or run.iteration == config.iters:
            if not all_finite(run.model):
                raise divergence(f"the head's weights became non-finite by iteration {run.iteration}", run.out,
                                 RESTART_HINT)
            if run.dist.is_main:
                save_atomic(run.state(), run.out / "last.pt")


def distillation_losses(run: FinetuneRun, images: torch.Tensor, outputs: dict[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """Each task's distillation loss towards the head teacher's outputs on ``images`` (none without
    ``--head-teacher``; :meth:`~cmim_dense.dense.tasks.DenseTask.distillation`)."""
    if run.teacher is None:
        return {}
    with torch.no_grad():
        targets = task_outputs(run.teacher(images), run.tasks)
    return {task.name: task.distillation(outputs[task.name], targets[task.name]) for task in run.tasks}


def share_rank0_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Under DDP each rank's forwards move its own BatchNorm statistics: every rank takes rank 0's
    (the saved model's) before a sharded evaluation."""
    if context.enabled:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def evaluate_during_training(run: FinetuneRun, writer: SummaryWriter | None) -> None:
    """``--eval-every``: the task's printed metrics on the test split now, into the run's history,
    TensorBoard and one line (rank 0); the training that follows is the same as without it."""
    config = run.config
    share_rank0_buffers(run.model, run.dist)
    results = evaluate_dense(run.model, run.data.test, run.tasks, config, run.dist.device, amp=config.amp,
                             context=run.dist)
    headline = {key: results[task.name][key] for task in run.tasks for key in task.printed}
    run.history[-1].update(headline)
    if writer is not None:
        for key, value in headline.items():
            writer.add_scalar(f"finetune/{key}", value, run.iteration)
    if run.dist.is_main:
        figures = "  ".join(f"{key} {value:.4f}" for key, value in headline.items())
        print(f"[{config.task} fine-tune] iteration {run.iteration}/{config.iters}  {figures}", flush=True)


@torch.no_grad()
def evaluate_dense(model: nn.Module, dataset: NYUDv2, tasks: Sequence[DenseTask], settings: TaskSettings,
                   device: torch.device, batch_size: int = 4, amp: bool = False,
                   context: DistributedContext | None = None) -> dict[str, dict[str, Any]]:
    """Task name -> that task's metrics of ``model`` (one task's, or a multi-task model's, one
    forward per batch for all) over the whole test split at full resolution (rank-sharded under
    DDP).  Frames whose sides do not divide by the encoder's output stride (120x160 at stride 16)
    are padded at the bottom and right with zeros, the normalised mean colour, and the prediction
    cropped back to the frame, as the segmentation toolboxes' test pipelines do."""
    context = context or DistributedContext(device=device)
    shard = Subset(dataset, list(range(context.rank, len(dataset), context.world_size)))
    # a private generator: an evaluation during training must not draw from the global RNG
    loader = DataLoader(shard, batch_size=batch_size, generator=torch.Generator())
    meters = {task.name: task.meter(settings, dataset) for task in tasks}
    multiple = getattr(getattr(model, "encoder", None), "output_stride", 32)
    was_training = model.training
    model.eval()
    for batch in loader:
        images = batch["image"].to(device)
        height, width = images.shape[-2:]
        images = F.pad(images, (0, -width % multiple, 0, -height % multiple))
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            outputs = task_outputs(model(images), tasks)
        for task in tasks:
            output = outputs[task.name][..., :height, :width].float()
            meters[task.name].update(task.prediction(output).cpu(), batch[task.target])
    model.train(was_training)
    return {name: meter.compute() for name, meter in meters.items()}


def metrics_record(config: FinetuneConfig, task: DenseTask, meta: dict[str, Any], results: dict[str, Any],
                   data: TaskData, seconds: float | None) -> dict[str, Any]:
    """metrics.json: the task's metrics and those of its constant baseline, the backbone's identity (for
    the charts) and the protocol used (of a multi-task model's head: its tasks and loss weighting)."""
    identity = meta["backbone_meta"]
    record = {"task": task.name, "classes": config.classes, "backbone": meta["backbone"],
              "method": identity.get("method"), "arch": identity.get("arch"), "top1": identity.get("top1"),
              **results, "baseline": evaluate_constant(task, config, data.train, data.test), "head": config.head,
              "output_stride": config.output_stride, "iters": config.iters, "data": config.data,
              "eval_resolution": list(data.test.size), **task.record_extras(config),
              **({"binary_head": config.binary_head} if config.binary_head else {}),
              **({"head_teacher": config.head_teacher} if config.head_teacher else {})}
    if config.multi_task:  # no config.json beside it: the seed too
        record.update(multi_task=config.task, task_weighting=config.task_weighting, seed=config.seed)
    if seconds is not None:
        record["train_seconds"] = round(seconds, 1)
    return record


def run_finetuning(config: FinetuneConfig) -> dict[str, Any]:
    """Train the head(s) (resuming from ``out/last.pt`` with ``--resume``), evaluate, write each task's
    metrics.json; return its record (a multi-task run: ``{"task": ..., "records": {task: record}}``)."""
    context = setup_distributed()
    return in_owned_folder(config.out, context, lambda: _finetune_in_owned_folder(config, context))


def write_metrics(config: FinetuneConfig, tasks: Sequence[DenseTask], meta: dict[str, Any],
                  results: dict[str, dict[str, Any]], data: TaskData, seconds: float | None) -> dict[str, Any]:
    """Each task's metrics.json (``out/metrics.json``; a multi-task run: ``out/TASK/metrics.json``) and
    what :func:`run_finetuning` returns."""
    records = {task.name: metrics_record(config, task, meta, results[task.name], data, seconds) for task in tasks}
    for name, path in metrics_paths(config.out, config.task).items():
        write_json(path, records[name])  # makes the folders
    return {"task": config.task, "records": records} if config.multi_task else records[config.task]


def _finetune_in_owned_folder(config: FinetuneConfig, context: DistributedContext) -> dict[str, Any]:
    """:func:`run_finetuning` once rank 0 holds the output folder's lock."""
    resumed = read_resumed(config, "dense")  # before anything is built: a refusal comes at once
    run = build_finetune_run(config, context)
    writer = open_run(run, resumed, config, context)
    start = time.perf_counter()
    if run.iteration < config.iters:
        train_iterations(run, writer)
    seconds = time.perf_counter() - start
    share_rank0_buffers(run.model, context)
    results = evaluate_dense(run.model, run.data.test, run.tasks, config, context.device, amp=config.amp,
                             context=context)
    record = {}
    if context.is_main:
        record = write_metrics(config, run.tasks, run.meta(), results, run.data, seconds)
        writer.close()
    context.barrier()
    return record


def evaluate_head_checkpoint(path: str, data: str | None = None, out: str | None = None,
                             packed_backbone: bool = True) -> dict[str, Any]:
    """Rebuild a fine-tuned model from its ``last.pt`` alone and evaluate it on its own (or ``data``'s)
    test split (``--evaluate``; the backbone on the packed kernel on a CPU unless ``packed_backbone`` is False)."""
    model, meta = dense_model_from_checkpoint(path)
    model.encoder.packed_inference = packed_backbone
    config = resolve_finetune_config({**meta["config"], "data": data or meta["config"]["data"],
                                      "out": out or str(Path(path).parent), "progress_bar": False})
    tasks = [get_task(name) for name in config.task_names]
    device = setup_distributed().device
    model.to(device)
    task_data = task_data_of(meta, config.data)
    results = evaluate_dense(model, task_data.test, tasks, config, device)
    return write_metrics(config, tasks, meta, results, task_data, None)
