"""The skeleton every training run shares (pretraining and fine-tuning): one process owns the
output folder, the global batch splits over the processes, the model is wrapped for DDP, a run
resumes from ``last.pt``, writes ``config.json`` and TensorBoard logs, shows a progress bar on a
terminal and progress lines elsewhere, and stops with a one-line error at a non-finite loss."""

from __future__ import annotations

import datetime
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..checkpoint_io import write_json
from ..run_folder import owned_folder
from .distributed import DistributedContext
from .run_state import divergence, require_same_settings, resumable_state

T = TypeVar("T")


class RunConfig(Protocol):
    """What the skeleton reads of a run's configuration."""

    out: str
    resume: bool
    progress_bar: bool
    log_every: float

    def settings(self) -> dict[str, Any]: ...


class Resumable(Protocol):
    """A run whose state a ``last.pt`` restores."""

    def restore(self, state: dict[str, Any]) -> None: ...


def in_owned_folder(out: str | Path, context: DistributedContext, body: Callable[[], T]) -> T:
    """``body()`` while rank 0 holds the output folder's lock (:func:`~cmim_dense.run_folder.owned_folder`)."""
    with owned_folder(out) if context.is_main else nullcontext():
        return body()


def require_divisible_batch(batch_size: int, context: DistributedContext) -> None:
    if batch_size % context.world_size:
        raise ValueError(f"--batch-size {batch_size} (global) must divide by the {context.world_size} processes")


def distribute(module: nn.Module, context: DistributedContext, compile: bool = False) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun, itself otherwise; with
    ``compile`` (``--compile``) that network under ``torch.compile`` (TorchInductor, compiled on
    its first calls).  The wrappers share ``module``'s parameters and buffers: checkpoints save
    ``module.state_dict()``, whose keys carry no ``module.`` or ``_orig_mod.`` prefix."""
    network = module
    if context.enabled:
        device = context.device
        network = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(network) if compile else network


def read_resumed(config: RunConfig, role: str) -> dict[str, Any] | None:
    """``out/last.pt`` to continue with ``--resume`` (None when there is none), read before the run
    is built so that a refusal comes at once: a run already in ``out`` without ``--resume``, a
    checkpoint of another ``role`` than the run writes, or one from other result settings."""
    resumed = resumable_state(config.out, config.resume, role)
    if resumed is not None:
        require_same_settings(resumed["meta"]["config"], config.settings(), Path(config.out) / "last.pt")
    return resumed


def open_run(run: Resumable, resumed: dict[str, Any] | None, config: RunConfig, context: DistributedContext
             ) -> SummaryWriter | None:
    """Restore ``run`` from ``resumed`` (:func:`read_resumed`), wait until every rank has read it,
    write ``config.json``; the TensorBoard writer of rank 0."""
    if resumed is not None:
        run.restore(resumed)
    context.barrier()  # every rank has read last.pt before rank 0 may replace it
    if not context.is_main:
        return None
    write_json(Path(config.out) / "config.json", config.settings())
    return SummaryWriter(str(Path(config.out) / "tensorboard"))


def require_finite_loss(value: float, event: str, out: str | Path, continue_with: str) -> None:
    """The one-line divergence error (:func:`~cmim_dense.engine.run_state.divergence`) at a NaN or infinite loss."""
    if not np.isfinite(value):
        raise divergence(f"loss became {value} {event}", Path(out), continue_with)


def progress(items: Iterable[T], description: str, config: RunConfig, context: DistributedContext,
             total: int | None = None, initial: int = 0) -> tqdm:
    """A progress bar over ``items`` on rank 0 when ``--no-progress`` is not given (and a terminal is)."""
    return tqdm(items, desc=description, total=total, initial=initial, leave=False, mininterval=1.0,
                disable=None if config.progress_bar and context.is_main else True)


class LineLog:
    """Progress as lines for output that is not a terminal (a batch job, ``> log``), where tqdm draws
    no bar: every ``every`` seconds one line with the step, the loss (the CMIM term apart), images/s,
    the learning rate and the time left at the pace since the log began."""

    def __init__(self, label: str, total_steps: int, first_step: int, every: float, enabled: bool) -> None:
        self.label, self.total_steps, self.first_step, self.every, self.enabled = (
            label, total_steps, first_step, every, enabled)
        self.started = self.last = time.perf_counter()

    def update(self, step: int, loss: float, images_per_s: float, lr: float, cmim: float | None = None) -> None:
        """Print the line for ``step`` (the optimizer steps done) if ``every`` seconds have passed since the last."""
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        seconds_left = (self.total_steps - step) * (now - self.started) / max(step - self.first_step, 1)
        term = f" (CMIM {cmim:.4f})" if cmim is not None else ""
        print(f"[{self.label}] step {step}/{self.total_steps}  loss {loss:.4f}{term}  {images_per_s:.1f} img/s  "
              f"lr {lr:.3g}  eta {datetime.timedelta(seconds=round(seconds_left))}", flush=True)


def line_log(label: str, config: RunConfig, context: DistributedContext, total_steps: int,
             first_step: int) -> LineLog:
    """The :class:`LineLog` of a run: on rank 0, unless ``--no-progress`` or ``--log-every 0``, and
    only where :func:`progress` draws no bar (tqdm draws on standard error when it is a terminal)."""
    enabled = config.progress_bar and context.is_main and config.log_every > 0 and not sys.stderr.isatty()
    return LineLog(label, total_steps, first_step, config.log_every, enabled)
