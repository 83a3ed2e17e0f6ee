"""Frozen-backbone fine-tuning on NYUD-v2 (segmentation or depth) and its evaluation.

The data path: a pretraining checkpoint -> :func:`dense_model_from_backbone` -> iterations of
SGD on the head -> ``last.pt`` (atomic, every ``save_every`` iterations) -> evaluation on the
whole test split at full resolution -> ``metrics.json``.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..cli import first_line
from ..data.classification import IMAGENET_MEAN, IMAGENET_STD
from ..data.nyud import JointTransform, NYUDv2
from ..data.synthetic_nyud import ensure_synthetic_nyud
from ..dense import create_dense_model, dense_model_from_backbone, depth_loss
from ..dense.model import head_parameters
from ..metrics import DepthMeter, SegmentationMeter
from ..run_folder import owned_folder
from .checkpoint import (all_finite, divergence, load_checkpoint_as, optimization_state, require_same_settings,
                         restore_optimization, resumable_state, save_atomic, write_json)
from .distributed import DistributedContext, setup_distributed
from .finetune_config import FinetuneConfig
from .optim import backward_step
from .rng import rng_state, seed_everything, set_rng_state

IMAGENET_NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def nyud_root(data: str, progress: bool = False) -> Path:
    """A prepared layout: ``data`` itself, or for ``synthetic`` the built-in set, rendered and
    prepared on first use under $CMIM_DENSE_CACHE (default ``runs/data``)."""
    if data == "synthetic":
        return ensure_synthetic_nyud(Path(os.environ.get("CMIM_DENSE_CACHE", "runs/data")) / "nyud", progress=progress)
    return Path(data)


class SeededSamples(Dataset):
    """Items are (index, seed): the joint transform of each sample is seeded by the sampler, so
    augmentation depends only on (run seed, epoch, position), not on workers or restarts."""

    def __init__(self, dataset: NYUDv2, transform: JointTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, seed = item
        self.transform.seed(seed)
        return self.transform(self.dataset[index])


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


def output_channels(config: FinetuneConfig) -> int:
    return config.classes if config.task == "seg" else 1


def normalization(backbone_meta: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation the backbone was pretrained with (ImageNet's when not recorded)."""
    norm = backbone_meta.get("normalization", IMAGENET_NORMALIZATION)
    return tuple(norm["mean"]), tuple(norm["std"])


@dataclass
class FinetuneRun:
    config: FinetuneConfig
    model: nn.Module
    network: nn.Module
    backbone_meta: dict[str, Any]
    train: NYUDv2
    test: NYUDv2
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    dist: DistributedContext
    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def meta(self) -> dict[str, Any]:
        """What rebuilds the dense model from the head checkpoint alone."""
        return {"task": self.config.task, "classes": self.config.classes, "out_channels": output_channels(self.config),
                "head": self.config.head, "output_stride": self.config.output_stride,
                "decoder_channels": self.config.decoder_channels, "backbone": str(Path(self.config.backbone).resolve()),
                "backbone_meta": _backbone_identity(self.backbone_meta), "iteration": self.iteration,
                "config": self.config.settings()}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "meta": self.meta(),
                **optimization_state(self.optimizer, self.scheduler, self.scaler),
                "history": self.history, "rng": rng_state()}

    def restore(self, state: dict[str, Any]) -> None:
        require_same_settings(state["meta"]["config"], self.config.settings(), self.out / "last.pt")
        self.model.load_state_dict(state["model"])
        restore_optimization(state, self.optimizer, self.scheduler, self.scaler)
        self.iteration = state["meta"]["iteration"]
        self.history = list(state["history"])
        set_rng_state(state["rng"])


def _backbone_identity(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "arch", "num_classes", "top1", "top5", "epoch", "data", "real_weights", "normalization")
    return {key: meta[key] for key in keys if key in meta}


def build_finetune_run(config: FinetuneConfig, context: DistributedContext) -> FinetuneRun:
    seed_everything(config.seed)
    if config.batch_size % context.world_size:
        raise ValueError(f"--batch-size {config.batch_size} (global) must divide by the {context.world_size} processes")
    model, backbone_meta = dense_model_from_backbone(config.backbone, output_channels(config), config.head,
                                                     config.output_stride, config.decoder_channels,
                                                     freeze=not config.unfreeze)
    if context.is_main:  # one process renders/prepares the built-in data; the others wait for it
        nyud_root(config.data, progress=config.progress_bar)
    context.barrier()
    root = nyud_root(config.data)
    mean, std = normalization(backbone_meta)
    train = NYUDv2(root, "train", config.classes, depth=config.depth_gt)
    test = NYUDv2(root, "test", config.classes, JointTransform(mean, std), depth=config.depth_gt)
    if config.task == "depth":  # start the head at the constant baseline: bias = mean training depth
        with torch.no_grad():
            model.segmentation_head[0].bias.fill_(train.mean_depth)
    model.to(context.device)
    optimizer = torch.optim.SGD(head_parameters(model), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.1 ** (it // config.lr_step))
    scaler = torch.amp.GradScaler("cuda") if config.amp else None
    network: nn.Module = model
    if context.enabled:
        network = DistributedDataParallel(model, device_ids=[context.device.index] if context.device.type == "cuda"
                                          else None)
    return FinetuneRun(config, model, network, backbone_meta, train, test, optimizer, scheduler, scaler, context)


def task_loss(config: FinetuneConfig, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Segmentation: cross-entropy, unlabeled (255) ignored.  Depth: ``config.depth_loss`` on pixels with ground truth."""
    if config.task == "seg":
        return F.cross_entropy(output.float(), batch["label"], ignore_index=255)
    return depth_loss(config.depth_loss, output.float(), batch["depth"])


# a fine-tune is short: a diverged one starts again (its last.pt stays for --evaluate)
RESTART_HINT = "start again with a lower --lr in a new folder (--out NEW)"


def train_iterations(run: FinetuneRun, writer: SummaryWriter | None) -> None:
    """Iterations ``run.iteration .. config.iters - 1``, with an atomic ``last.pt`` every ``save_every``."""
    config, device = run.config, run.dist.device
    mean, std = normalization(run.backbone_meta)
    samples = SeededSamples(run.train, JointTransform(mean, std, crop=config.crop, scale=config.scale))
    batches = iteration_batches(len(samples), config.batch_size, config.seed, run.iteration, config.iters,
                                run.dist.rank, run.dist.world_size)
    # a private generator: creating the loader must not draw from the global RNG (dropout's), or a
    # resumed run would see a shifted random stream
    loader = DataLoader(samples, batch_sampler=list(batches), num_workers=config.workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    run.network.train()
    bar = tqdm(loader, desc=f"{config.task} fine-tune", initial=run.iteration, total=config.iters, leave=False,
               disable=None if config.progress_bar and run.dist.is_main else True, mininterval=1.0)
    start, seen = time.perf_counter(), 0
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
            loss = task_loss(config, run.network(batch["image"]), batch)
        value = loss.item()
        if not np.isfinite(value):
            raise divergence(f"loss became {value} at iteration {run.iteration}", run.out, RESTART_HINT)
        backward_step(loss, run.optimizer, run.scaler)
        run.scheduler.step()
        run.iteration += 1
        seen += batch["image"].shape[0] * run.dist.world_size
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{value:.3f}", img_s=f"{rate:.1f}")
        run.history.append({"iteration": run.iteration, "loss": value, "lr": run.optimizer.param_groups[0]["lr"],
                            "images_per_s": rate})
        if writer is not None:
            writer.add_scalar(f"finetune/{config.task}_loss", value, run.iteration)
        if run.iteration % config.save_every == 0 or run.iteration == config.iters:
            if not all_finite(run.model):
                raise divergence(f"the head's weights became non-finite by iteration {run.iteration}", run.out,
                                 RESTART_HINT)
            if run.dist.is_main:
                save_atomic(run.state(), run.out / "last.pt")


@torch.no_grad()
def evaluate_dense(model: nn.Module, dataset: NYUDv2, task: str, device: torch.device, batch_size: int = 4,
                   amp: bool = False, depth_meter: DepthMeter | None = None,
                   context: DistributedContext | None = None) -> dict[str, Any]:
    """Metrics of ``model`` over the whole test split at full resolution (rank-sharded under DDP)."""
    context = context or DistributedContext(device=device)
    shard = Subset(dataset, list(range(context.rank, len(dataset), context.world_size)))
    loader = DataLoader(shard, batch_size=batch_size)
    meter: SegmentationMeter | DepthMeter = (SegmentationMeter(dataset.classes, class_names=dataset.class_names)
                                             if task == "seg" else depth_meter or DepthMeter())
    was_training = model.training
    model.eval()
    for batch in loader:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            output = model(batch["image"].to(device)).float()
        if task == "seg":
            meter.update(output.argmax(1).cpu(), batch["label"])
        else:
            meter.update(output[:, 0].cpu(), batch["depth"])
    model.train(was_training)
    return meter.compute()


def trivial_baseline(train: NYUDv2, test: NYUDv2, task: str, depth_meter: DepthMeter) -> dict[str, Any]:
    """The constant predictor's metrics: the majority training class, or the mean training depth
    (computed by one process over the whole test split: no collective calls)."""
    if task == "seg":
        meter = SegmentationMeter(test.classes)
        majority = train.majority_class
        for frame in test.array("label"):
            label = torch.from_numpy(np.array(frame)).long()
            meter.update(torch.full_like(label, majority), label)
        result = meter.compute(reduce=False)
        return {"predictor": f"class {majority} ({train.class_names[majority]}) everywhere",
                **{k: result[k] for k in ("miou", "pixel_acc", "mean_acc")}}
    constant = train.mean_depth
    for frame in test.array("depth"):
        target = torch.from_numpy(np.array(frame))[None]
        depth_meter.update(torch.full_like(target, constant), target)
    result = depth_meter.compute(reduce=False)
    return {"predictor": f"{constant:.3f} m everywhere", **{k: result[k] for k in ("rmse", "neg_log_rmse", "abs_rel",
                                                                                      "delta1")}}


def depth_meter_for(config: FinetuneConfig) -> DepthMeter:
    return DepthMeter(cap=config.depth_cap, eigen_crop=config.eigen_crop)


def metrics_record(config: FinetuneConfig, meta: dict[str, Any], results: dict[str, Any], baseline: dict[str, Any],
                   test: NYUDv2, seconds: float | None) -> dict[str, Any]:
    """metrics.json: the task's metrics, the backbone's identity (for the charts) and the protocol used."""
    identity = meta["backbone_meta"]
    record = {"task": config.task, "classes": config.classes, "backbone": meta["backbone"],
              "method": identity.get("method"), "arch": identity.get("arch"), "top1": identity.get("top1"),
              **results, "baseline": baseline, "head": config.head, "output_stride": config.output_stride,
              "iters": config.iters, "data": config.data, "eval_resolution": list(test.size)}
    if config.task == "depth":
        record.update(depth_gt=config.depth_gt, eigen_crop=config.eigen_crop, depth_cap=config.depth_cap,
                      rmse_aggregation="pooled over all valid test pixels (rmse_per_image: mean of per-image RMSE)",
                      neg_log_rmse_definition="-ln(rmse in metres)")
    if seconds is not None:
        record["train_seconds"] = round(seconds, 1)
    return record


def run_finetuning(config: FinetuneConfig) -> dict[str, Any]:
    """Train the head (resuming from ``out/last.pt`` with ``--resume``), evaluate, write ``metrics.json``."""
    context = setup_distributed()
    with owned_folder(config.out) if context.is_main else nullcontext():
        return _finetune_in_owned_folder(config, context)


def _finetune_in_owned_folder(config: FinetuneConfig, context: DistributedContext) -> dict[str, Any]:
    """:func:`run_finetuning` once rank 0 holds the output folder's lock."""
    run = build_finetune_run(config, context)
    resumed = resumable_state(run.out, config.resume)
    if resumed is not None:
        run.restore(resumed)
    context.barrier()
    if context.is_main:
        write_json(run.out / "config.json", config.settings())
    writer = SummaryWriter(str(run.out / "tensorboard")) if context.is_main else None
    start = time.perf_counter()
    if run.iteration < config.iters:
        train_iterations(run, writer)
    seconds = time.perf_counter() - start
    if context.enabled:  # each rank's last forward moved its own BatchNorm statistics: evaluate rank 0's (saved) model
        for buffer in run.model.buffers():
            torch.distributed.broadcast(buffer, 0)
    results = evaluate_dense(run.model, run.test, config.task, context.device, amp=config.amp,
                             depth_meter=depth_meter_for(config), context=context)
    record = {}
    if context.is_main:
        baseline = trivial_baseline(run.train, run.test, config.task, depth_meter_for(config))
        record = metrics_record(config, run.meta(), results, baseline, run.test, seconds)
        write_json(run.out / "metrics.json", record)
        writer.close()
    context.barrier()
    return record


def load_head_checkpoint(path: str | Path, data: str | None = None, out: str | None = None
                         ) -> tuple[nn.Module, dict[str, Any], FinetuneConfig]:
    """A fine-tuned dense model rebuilt from its ``last.pt`` alone (frozen, eval mode), its meta and config."""
    checkpoint = load_checkpoint_as(path, "dense")
    meta = checkpoint["meta"]
    settings = dict(meta["config"])
    settings.update(out=out or str(Path(path).parent), data=data or settings["data"], progress_bar=False)
    config = FinetuneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    identity = meta["backbone_meta"]
    model = create_dense_model(identity["arch"], identity["method"], meta["out_channels"], meta["head"],
                               meta["output_stride"], meta["decoder_channels"], identity.get("real_weights", False))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit its own description ({first_line(error)})") from None
    model.freeze_encoder()
    return model.eval(), meta, config


def test_split(config: FinetuneConfig, backbone_meta: dict[str, Any]) -> NYUDv2:
    """The test split of ``config.data``, transformed for evaluation with the backbone's normalisation."""
    mean, std = normalization(backbone_meta)
    return NYUDv2(nyud_root(config.data), "test", config.classes, JointTransform(mean, std), depth=config.depth_gt)


def evaluate_head_checkpoint(path: str, data: str | None = None, out: str | None = None) -> dict[str, Any]:
    """Rebuild a fine-tuned model from its ``last.pt`` alone and evaluate it (``--evaluate``)."""
    model, meta, config = load_head_checkpoint(path, data, out)
    device = setup_distributed().device
    model.to(device)
    test = test_split(config, meta["backbone_meta"])
    results = evaluate_dense(model, test, config.task, device, depth_meter=depth_meter_for(config))
    train = NYUDv2(test.root, "train", config.classes, depth=config.depth_gt)
    baseline = trivial_baseline(train, test, config.task, depth_meter_for(config))
    record = metrics_record(config, meta, results, baseline, test, None)
    write_json(Path(config.out) / "metrics.json", record)  # creates the folder
    return record
