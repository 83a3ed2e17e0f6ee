"""Two-process DDP training on CPU (gloo), launched by torchrun as a user would."""

import subprocess
import sys
from pathlib import Path

from cmim_dense.checkpoint_io import load_checkpoint
from cmim_dense.losses import MemoryBank


def test_torchrun_two_processes_share_one_memory_bank(root, tmp_path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", str(root / "pretrain" / "run.py"), "--method", "irnet+cmim",
         "--epochs", "1", "--synthetic-samples", "64", "--batch-size", "16", "--image-size", "32",
         "--cmim-nce-n", "8", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=200,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("best top-1") == 1  # only rank 0 reports
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["progress"]["step"] == 4  # 64 samples / global batch 16
    for k, (site, bank) in enumerate(checkpoint["cmim"]["banks"].items()):
        initial = MemoryBank(64, 128, seed=k).values
        updated = (bank["values"] != initial).any(dim=1)
        # each rank saw half of the 64 samples; the bank of rank 0 holds the updates of both
        assert int(updated.sum()) == 64, site
