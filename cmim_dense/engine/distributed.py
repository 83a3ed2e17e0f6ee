"""torchrun integration: one code path for 1 process or N (nccl on GPUs, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from ..cli import report_user_errors

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def main_first(self, make: Callable[[bool], T]) -> T:
        """``make(True)`` on rank 0, then ``make(False)`` on the other ranks once it is done: rank 0
        prepares what all read (the built-in data, with its progress shown), the others find it ready."""
        value = make(True) if self.is_main else None
        self.barrier()
        return value if self.is_main else make(False)


def setup_distributed() -> DistributedContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if world_size == 1:
        return DistributedContext(device=device)
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistributedContext(dist.get_rank(), world_size, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_command(job: Callable[[], T]) -> tuple[int, T | None]:
    """Run a command line's (possibly torchrun-launched) job: (exit status, what to report).

    A user error becomes one line on stderr and status 2 (:func:`cmim_dense.cli.report_user_errors`);
    the process group is torn down either way; only rank 0 gets the result back to print.
    """
    try:
        status, result = report_user_errors(job)
    finally:
        cleanup_distributed()
    return status, result if os.environ.get("RANK", "0") == "0" else None
