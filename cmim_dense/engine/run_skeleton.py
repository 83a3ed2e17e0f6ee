"""The skeleton every training run shares (pretraining and fine-tuning): one process owns the
output folder, the global batch splits over the processes, the model is wrapped for DDP, a run
resumes from ``last.pt``, writes ``config.json`` and TensorBoard logs, shows a progress bar, and
stops with a one-line error at a non-finite loss."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, TypeVar

import numpy as np
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..checkpoint_io import write_json
from ..run_folder import owned_folder
from .distributed import DistributedContext
from .run_state import divergence, resumable_state

T = TypeVar("T")


class RunConfig(Protocol):
    """What the skeleton reads of a run's configuration."""

    out: str
    resume: bool
    progress_bar: bool

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


def distribute(module: nn.Module, context: DistributedContext) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun, itself otherwise."""
    if not context.enabled:
        return module
    device = context.device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def open_run(run: Resumable, config: RunConfig, context: DistributedContext, role: str) -> SummaryWriter | None:
    """Resume ``run`` from ``out/last.pt`` with ``--resume`` (never overwriting one without it, and
    only from a checkpoint of the ``role`` the run writes), wait until every rank has read it, write
    ``config.json``; the TensorBoard writer of rank 0."""
    resumed = resumable_state(config.out, config.resume, role)
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
