"""Two-process DDP training on CPU (gloo), launched by torchrun as a user would."""

import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmim_dense.checkpoint_io import load_checkpoint
from cmim_dense.losses import MemoryBank


def test_torchrun_two_processes_share_one_memory_bank(root, tmp_path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2",  # --standalone: a free port
         str(root / "pretrain" / "run.py"), "--method", "irnet+cmim", "--epochs", "1", "--synthetic-samples", "64", "--batch-size", "16", "--image-size", "32",
         "--cmim-nce-n", "8", "--out", str(out), "--no-progress"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("best top-1") == 1  # only rank 0 reports
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["progress"]["step"] == 4  # 64 samples / global batch 16
    for k, (site, banks) in enumerate(checkpoint["cmim"]["banks"].items()):
        for j, (side, bank) in enumerate(banks.items()):
            initial = MemoryBank(64, 128, seed=2 * k + j).values
            updated = (bank["values"] != initial).any(dim=1)
            # each rank saw half of the 64 samples; the bank of rank 0 holds the updates of both
            assert int(updated.sum()) == 64, (site, side)


def update_on_rank(rank: int, port: int, results: dict) -> None:
    """One rank of :func:`test_ddp_bank_update_writes_each_rank_rows`: update rows of its own."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        bank = MemoryBank(10, 3, momentum=0.0, normalize=False, seed=0)
        indices = torch.tensor([[7, 2, 4], [0, 9, 5]][rank])
        values = torch.arange(9, dtype=torch.float32).view(3, 3) + 100 * (rank + 1)
        bank.update(indices, values)
        results[rank] = bank.values.clone()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ddp_bank_update_writes_each_rank_rows() -> None:
    """Issue #21, item 5, under DDP: after one update on two gloo ranks with momentum 0, both
    ranks' banks hold rank 0's values in rank 0's rows and rank 1's in rank 1's, the rest as drawn.

    Catches: updates not gathered across ranks (each rank keeps only its own rows), gathered
    values paired with the wrong rank's indices."""
    results = mp.Manager().dict()
    mp.spawn(update_on_rank, args=(free_port(), results), nprocs=2)
    initial = MemoryBank(10, 3, normalize=False, seed=0).values
    expected = initial.clone()
    for rank, rows in enumerate(([7, 2, 4], [0, 9, 5])):
        expected[rows] = torch.arange(9, dtype=torch.float32).view(3, 3) + 100 * (rank + 1)
    assert torch.equal(results[0], expected) and torch.equal(results[1], expected)
