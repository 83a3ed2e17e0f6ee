"""A run killed with SIGKILL and resumed ends bit for bit where an uninterrupted run ends."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from cmim_dense.checkpoint_io import load_checkpoint

ARGS = ["--method", "rbnn+cmim", "--epochs", "3", "--synthetic-samples", "64", "--batch-size", "16",
        "--image-size", "32", "--cmim-nce-n", "8", "--no-progress"]


def finished_epoch(path) -> int:
    try:
        return load_checkpoint(path)["meta"]["epoch"]
    except (FileNotFoundError, ValueError):
        return 0


def test_existing_run_is_never_overwritten(entry_script, tmp_path, capsys) -> None:
    """pretrain/run.py's main() in this process: status 2, and the existing last.pt untouched."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"precious")
    assert entry_script("pretrain/run").main([*ARGS, "--out", str(out)]) == 2
    assert "add --resume" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == b"precious"


def test_nan_loss_stops_with_a_one_line_message(tmp_path) -> None:
    import pytest

    from cmim_dense.engine import resolve_config, run_pretraining

    config = resolve_config("fp", {"epochs": 1, "batch_size": 8, "image_size": 32, "synthetic_samples": 24,
                                   "optimizer": "sgd", "lr": 1e30, "out": str(tmp_path / "run"),
                                   "progress_bar": False})
    with pytest.raises(FloatingPointError,
                       match=r"loss became (nan|inf) at step \d+ \(epoch 1\); nothing was saved before it"):
        run_pretraining(config)
    assert not (tmp_path / "run" / "last.pt").exists()


def image_folder(root) -> None:
    """An ImageNet-style folder (train/ and val/, a sub-folder per class) of small random PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 3)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for k in range(count):
                Image.fromarray(rng.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(root / split / label / f"{k}.png")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigkill_then_resume_on_an_image_folder_with_augmentation_is_bit_exact(entry_script, python, root, tmp_path,
                                                                               workers) -> None:
    """Real data: RandomResizedCrop and flips draw from the global RNG in the main process
    (``--workers 0``) and from per-epoch worker seeds otherwise.  A kill -9 after the first epoch,
    then --resume, must end as an uninterrupted run.  Catches a resume that does not restore the
    RNG state (the workers-0 case), which the built-in data, drawing no random numbers, cannot.
    The killed run is a process of its own; the reference and the resume are pretrain/run.py's
    main() in this process (no interpreter start), the killed run on as many threads."""
    data = tmp_path / "images"
    image_folder(data)
    flags = ["--method", "irnet", "--data", str(data), "--epochs", "3", "--batch-size", "8", "--image-size", "16",
             "--workers", workers, "--no-progress"]
    pretrain = entry_script("pretrain/run")
    assert pretrain.main([*flags, "--out", str(tmp_path / "reference")]) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([python, str(root / "pretrain" / "run.py"), *flags, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    while finished_epoch(killed / "last.pt") < 1 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert finished_epoch(killed / "last.pt") in (1, 2)
    assert pretrain.main([*flags, "--out", str(killed), "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "reference" / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == 3
    assert all(torch.equal(value, b["model"][key]) for key, value in a["model"].items())
