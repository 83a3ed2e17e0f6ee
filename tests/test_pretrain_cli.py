"""The pretraining command line with a user's arguments: ``--list-methods`` as a process of its own, the
runs as pretrain/run.py's main() in this process (the same code without an interpreter's start)."""

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from cmim_dense.checkpoint_io import load_checkpoint
from cmim_dense.methods import list_recipes
from cmim_dense.models import create_model


def run(python, root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, str(root / "pretrain" / "run.py"), *args], capture_output=True, text=True
    )


def test_list_methods(python, root) -> None:
    result = run(python, root, "--list-methods")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()[:-1]]
    assert names == [r.name for r in list_recipes()]
    assert len(names) == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "foo"], "unknown method 'foo'; valid: bireal, bnn,"),
        (["--method", "irnet+kd"], "unknown method suffix '+kd'"),
        (["--method", "fp+cmim"], "has no binary activations"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--data", "/nonexistent/imagenet"], "is not a folder"),
        (["--method", "reactnet"], "pass --teacher PATH"),
        (["--method", "dirnet", "--teacher", "/nonexistent/teacher.pt"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error(entry_script, capsys, tmp_path, args, message) -> None:
    """In this process (the command's main()): the same checks without an interpreter's start per case."""
    assert entry_script("pretrain/run").main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_pretraining_writes_self_describing_checkpoints_and_learns(entry_script, capsys, tmp_path) -> None:
    """pretrain/run.py's main() in this process (the command line without an interpreter's start):
    2 epochs of 390 images learn the built-in world (measured 88 % top-1, chance 7.7 %), the
    checkpoints describe themselves, and --evaluate of last.pt reproduces its top-1."""
    out = tmp_path / "fp"
    pretrain = entry_script("pretrain/run")
    assert pretrain.main(["--method", "fp", "--epochs", "2", "--synthetic-samples", "390", "--batch-size", "32",
                          "--image-size", "32", "--optimizer", "adam", "--lr", "0.001", "--out", str(out),
                          "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    checkpoint = load_checkpoint(out / "best.pt")
    assert set(checkpoint) == {"model", "meta"}  # resume state lives in last.pt only
    meta = checkpoint["meta"]
    assert {"method", "arch", "num_classes", "epoch", "top1", "top5", "data", "recipe", "config"} <= set(meta)
    assert meta["top1"] == max(r["val_top1"] for r in records)
    assert meta["top1"] > 0.2  # 13 classes: chance is 0.077
    model = create_model(meta["arch"], meta["method"], num_classes=meta["num_classes"])
    model.load_state_dict(checkpoint["model"])
    last_checkpoint = load_checkpoint(out / "last.pt")
    assert {"optimizer", "scheduler", "progress", "rng"} <= set(last_checkpoint)
    last = last_checkpoint["meta"]
    assert last["epoch"] == 2
    capsys.readouterr()
    assert pretrain.main(["--evaluate", str(out / "last.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == last["top1"]


def test_image_folder_data(entry_script, tmp_path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    assert entry_script("pretrain/run").main(["--method", "irnet", "--data", str(tmp_path / "data"), "--image-size",
                                              "32", "--batch-size", "4", "--epochs", "1", "--out", str(out),
                                              "--no-progress"]) == 0
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert meta["num_classes"] == 2 and meta["data"].startswith("imagefolder(")
    assert torch.load(out / "last.pt", weights_only=True)["meta"]["method"] == "irnet"


def test_cmim_pretraining_saves_heads_and_banks(entry_script, tmp_path) -> None:
    """The CMIM flags reach the saved recipe, heads and banks (float16), and the CMIM term is trained
    (64 built-in images: the banks' size is not what is checked)."""
    out = tmp_path / "rbnn_cmim"
    assert entry_script("pretrain/run").main([
        "--method", "rbnn+cmim", "--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--synthetic-samples",
        "64", "--image-size", "32", "--cmim-nce-n", "16", "--cmim-layers", "stages", "--cmim-lambda", "0.4",
        "--cmim-bank-dtype", "float16", "--out", str(out), "--no-progress"]) == 0
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["meta"]["method"] == "rbnn+cmim"
    assert checkpoint["meta"]["config"]["cmim"]["n_nce"] == 16
    # the recipe the model was built from records the settings used, not the defaults
    assert checkpoint["meta"]["recipe"]["cmim"] == {"lam": 0.4, "beta": 2.0, "tau": 0.1, "n_nce": 16, "layers": "stages"}
    assert len(checkpoint["cmim"]["banks"]) == 4
    assert all(bank["values"].dtype == torch.float16 and len(bank["values"]) == 64
               for banks in checkpoint["cmim"]["banks"].values() for bank in banks.values())
    assert torch.isfinite(checkpoint["cmim"]["heads"]["log_z"]).all()
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_cmim"] > 0


def test_eval_every_validates_less_and_trains_the_same_weights(tmp_path) -> None:
    """--eval-every 2 over 3 epochs validates epochs 2 and 3 only (the last always), best.pt is a
    validated epoch, last.pt carries the latest validation, and the weights equal those of a run validated every epoch (validation changes no
    training state). Catches a skipped last validation, a best.pt from an unvalidated epoch, and
    validation that leaks into training (BatchNorm statistics, RNG)."""
    from cmim_dense.engine import resolve_config, run_pretraining

    settings = {"epochs": 3, "synthetic_samples": 48, "synthetic_val_samples": 13, "image_size": 16,
                "batch_size": 16, "progress_bar": False}
    for every in (1, 2):
        run_pretraining(resolve_config("irnet+cmim", {**settings, "eval_every": every,
                                                      "out": str(tmp_path / f"every{every}")}))
    records = [json.loads(line) for line in (tmp_path / "every2" / "metrics.jsonl").read_text().splitlines()]
    assert ["val_top1" in record for record in records] == [False, True, True]
    best = load_checkpoint(tmp_path / "every2" / "best.pt")["meta"]
    assert best["epoch"] in (2, 3) and best["top1"] == records[best["epoch"] - 1]["val_top1"]
    every, sparse = (load_checkpoint(tmp_path / f"every{n}" / "last.pt") for n in (1, 2))
    assert sparse["meta"]["top1"] == records[-1]["val_top1"]
    assert all(torch.equal(every["model"][key], sparse["model"][key]) for key in every["model"])
    with pytest.raises(ValueError, match="--eval-every must be >= 1"):
        resolve_config("irnet", {**settings, "eval_every": 0, "out": str(tmp_path / "bad")})


def test_save_every_writes_last_pt_less_and_a_resume_repeats_the_epochs_since(tmp_path, monkeypatch) -> None:
    """--save-every 2 over 3 epochs writes last.pt after epochs 2 and 3 only; a run killed while
    writing epoch 3's keeps epoch 2's, and resuming it (with another --save-every: not a result
    setting) repeats epoch 3 and ends with the weights and history of an uninterrupted run.
    Catches a save_every ignored, a skipped last save, and a resume that loses epochs."""
    import cmim_dense.engine.pretrain as pretrain
    from cmim_dense.engine import resolve_config, run_pretraining

    settings = {"epochs": 3, "synthetic_samples": 48, "synthetic_val_samples": 13, "image_size": 16,
                "batch_size": 16, "progress_bar": False}
    whole = run_pretraining(resolve_config("irnet", {**settings, "out": str(tmp_path / "whole")}))
    written: list[int] = []
    save_atomic = pretrain.save_atomic

    def killed_at_epoch_3(state: dict, path) -> None:
        if path.name == "last.pt":
            written.append(state["meta"]["epoch"])
            if state["meta"]["epoch"] == 3:
                raise KeyboardInterrupt
        save_atomic(state, path)

    monkeypatch.setattr(pretrain, "save_atomic", killed_at_epoch_3)
    sparse = {**settings, "save_every": 2, "out": str(tmp_path / "sparse")}
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(resolve_config("irnet", sparse))
    assert written == [2, 3]
    assert load_checkpoint(tmp_path / "sparse" / "last.pt")["meta"]["epoch"] == 2
    monkeypatch.undo()
    resumed = run_pretraining(resolve_config("irnet", {**sparse, "save_every": 1, "resume": True}))
    timings = {"images_per_s", "epoch_time_s"}
    assert [{key: value for key, value in record.items() if key not in timings} for record in resumed["history"]] \
        == [{key: value for key, value in record.items() if key not in timings} for record in whole["history"]]
    final, reference = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("sparse", "whole"))
    assert all(torch.equal(final[key], reference[key]) for key in reference)
    with pytest.raises(ValueError, match="--save-every must be >= 1"):
        resolve_config("irnet", {**settings, "save_every": 0, "out": str(tmp_path / "bad")})
