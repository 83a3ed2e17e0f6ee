"""Faults a user meets: two runs into one folder, kills, corrupt inputs, divergence, bad flags.

Each test injects the fault for real (a second process, a SIGKILL, a truncated file) and checks
that the command refuses in one line and that nothing written before is lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cmim_dense.checkpoint_io import load_checkpoint, save_atomic, strict_json, write_json
from cmim_dense.data.nyud_mat import write_labeled_mat
from cmim_dense.data.nyud_meta import nyud_meta
from cmim_dense.data.nyud_prepare import TEMPORARY_MARKER, is_prepared, own_folder, prepare_nyud
from cmim_dense.dense import dense_model_from_backbone
from cmim_dense.engine import resolve_config, run_pretraining
from cmim_dense.engine.pretrain_run import INIT_FROM_HINT
from cmim_dense.engine.run_state import divergence
from cmim_dense.run_folder import FolderInUseError, exclusive_lock, owned_folder

from .test_nyud_data import _split

HOLD_LOCK = ("import sys, time\nfrom pathlib import Path\nfrom cmim_dense.run_folder import {function}\n"
             "with {function}({arguments}):\n    print('held', flush=True)\n    time.sleep(120)\n")


def hold_in_another_process(python: str, root: Path, function: str, arguments: str) -> subprocess.Popen:
    """A process that takes a lock with ``function(arguments)`` and keeps it until killed."""
    process = subprocess.Popen([python, "-c", HOLD_LOCK.format(function=function, arguments=arguments)],
                               cwd=root, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_folder_has_one_owner_and_a_dead_owners_lock_is_taken_over(python, root, tmp_path) -> None:
    """Catches: no lock, a lock that a killed owner leaves held forever (a pid file would), a
    refusal that does not name the owner, stale atomic-write temporaries never removed."""
    folder = tmp_path / "run"
    owner = hold_in_another_process(python, root, "owned_folder", f"Path({str(folder)!r})")
    try:
        with pytest.raises(FolderInUseError, match=rf"{folder} is in use by another run \(pid {owner.pid} on "):
            with owned_folder(folder):
                pass
    finally:
        owner.kill()
        owner.wait()
    (folder / ".last.pt.x1y2.cmim_dense.tmp").write_bytes(b"half a checkpoint")  # what a kill during a save leaves
    (folder / "last.pt").write_bytes(b"kept")
    (folder / ".notes.tmp").write_text("the user's")
    with owned_folder(folder):
        assert not (folder / ".last.pt.x1y2.cmim_dense.tmp").exists()
        assert (folder / "last.pt").read_bytes() == b"kept" and (folder / ".notes.tmp").read_text() == "the user's"
        assert f"pid {os.getpid()} " in (folder / ".lock").read_text()


def test_the_lock_file_goes_with_its_owner_and_a_waiter_never_shares_the_folder(tmp_path) -> None:
    """A finished run leaves no .lock behind (an error ending the block included).  The owner removes
    the file while it still holds the lock, so a run that had opened the old file and wins its lock
    then must open the new one: otherwise it would hold a lock on a deleted file while a third run
    takes the new .lock, two owners of one folder."""
    folder = tmp_path / "run"
    with owned_folder(folder):
        assert (folder / ".lock").is_file()
    assert not (folder / ".lock").exists()
    with pytest.raises(RuntimeError), owned_folder(folder):
        raise RuntimeError
    assert not (folder / ".lock").exists() and folder.is_dir()

    waiter_holds, waiter_may_leave = threading.Event(), threading.Event()

    def waiter() -> None:  # a second owner that waits (the shared-cache case), on the same folder
        with exclusive_lock(folder / ".lock", str(folder), wait=True):
            waiter_holds.set()
            waiter_may_leave.wait(60)

    with owned_folder(folder):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.5)  # the waiter has opened .lock and blocks on its flock
    assert waiter_holds.wait(60)
    try:
        with pytest.raises(FolderInUseError, match="is in use by another run"):
            with owned_folder(folder):
                pass
    finally:
        waiter_may_leave.set()
        thread.join()
    assert not (folder / ".lock").exists()


def test_a_forked_child_does_not_keep_its_parents_folder_locked(tmp_path) -> None:
    """Found under load: after a kill -9 of a run with loader workers, --resume was refused while the
    orphaned workers (forked, so holding the lock's descriptor) lived on.  A child forked inside the
    block must not hold the lock once the parent lets go."""
    folder = tmp_path / "run"
    started, tell_parent = os.pipe()
    with owned_folder(folder):
        child = os.fork()
        if child == 0:  # the child (its fork hooks have run): outlive the parent's block, leave without cleanup
            os.write(tell_parent, b"x")
            time.sleep(3)
            os._exit(0)
        assert os.read(started, 1) == b"x"
    try:
        with owned_folder(folder):
            pass
    finally:
        os.waitpid(child, 0)


PRETRAIN = ["--method", "irnet", "--epochs", "4", "--synthetic-samples", "96", "--batch-size", "32",
            "--image-size", "32", "--no-progress"]


def test_a_second_pretraining_into_a_busy_folder_is_refused_and_the_first_is_intact(python, root, tmp_path,
                                                                                   entry_script, capsys) -> None:
    """The issue's case: irnet and bnn started into one --out both exited 0 and mixed their files;
    a --resume into a running folder was not refused either.  The first run is a process of its own
    (the folder's lock is held by another process); the second and third are the command's main()
    in this process, which would otherwise take 4 s each to import torch."""
    out = tmp_path / "run"
    first = subprocess.Popen([python, str(root / "pretrain" / "run.py"), *PRETRAIN, "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / ".lock").is_file() or str(first.pid) not in (out / ".lock").read_text():
        assert first.poll() is None, "the first run ended before it was seen holding its folder"
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # paused, still the folder's owner, however slow the others start
    try:
        pretrain = entry_script("pretrain/run")
        for extra in ([], ["--resume"]):
            capsys.readouterr()
            assert pretrain.main([*PRETRAIN, "--method", "bnn", "--out", str(out), *extra]) == 2
            error = capsys.readouterr().err
            assert error.count("\n") == 1 and f"is in use by another run (pid {first.pid} " in error, error
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait() == 0, first.stderr.read()
    assert json.loads((out / "config.json").read_text())["method"] == "irnet"
    assert load_checkpoint(out / "last.pt")["meta"]["method"] == "irnet"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file, not two interleaved


def _labeled(path: Path, frames: int = 4) -> Path:
    rng = np.random.default_rng(0)
    write_labeled_mat(path, rng.integers(0, 255, (frames, 8, 12, 3), dtype=np.uint8),
                      np.full((frames, 8, 12), 2.0, np.float32), rng.integers(0, 895, (frames, 8, 12)),
                      names=nyud_meta().raw_names)
    return path


def test_prepare_force_replaces_only_a_prepared_set_and_leaves_a_live_prepare_alone(python, root, tmp_path) -> None:
    """The issue's cases: --force deleted a folder holding only notes.txt; start-up deleted the
    partial folder of a prepare still running."""
    mat, splits = _labeled(tmp_path / "labeled.mat"), _split(tmp_path / "splits.mat", [1, 2], [3, 4])
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a prepared NYUD-v2 layout; --force replaces only a prepared one"):
        prepare_nyud(mat, notes, splits, force=True, progress=False)
    assert (notes / "notes.txt").read_text() == "mine"

    out = tmp_path / "nyud"
    live_partial = tmp_path / "nyud.partial-99999"
    live_partial.mkdir()
    own_folder(live_partial, "partial", out)
    other = hold_in_another_process(python, root, "exclusive_lock", f"Path({str(tmp_path / '.nyud.lock')!r}), 'x'")
    try:
        with pytest.raises(FolderInUseError, match=f"is in use by another run \\(pid {other.pid} "):
            prepare_nyud(mat, out, splits, progress=False)
        assert live_partial.is_dir() and not out.exists()
    finally:
        other.kill()
        other.wait()
    prepare_nyud(mat, out, splits, progress=False)  # the owner died: its partial folder is garbage now
    assert is_prepared(out) and not live_partial.exists()
    (out / "marker").write_text("old")
    prepare_nyud(mat, out, splits, force=True, progress=False)
    assert is_prepared(out) and not (out / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("nyud")) == ["nyud"]


def test_a_prepare_killed_between_its_two_renames_gets_its_old_set_back(tmp_path) -> None:
    """swap_in moves the old set aside before moving the new one in: a kill in between leaves no
    ``out``; the next prepare must restore the old set, not delete it as garbage."""
    mat, splits = _labeled(tmp_path / "labeled.mat"), _split(tmp_path / "splits.mat", [1, 2], [3, 4])
    out = prepare_nyud(mat, tmp_path / "nyud", splits, progress=False)
    (out / "marker").write_text("old")
    own_folder(out, "replaced", out)
    out.rename(tmp_path / "nyud.replaced-4242")
    with pytest.raises(FileExistsError, match="already prepared"):
        prepare_nyud(mat, out, splits, progress=False)
    assert (out / "marker").read_text() == "old" and not (tmp_path / "nyud.replaced-4242").exists()
    assert not (out / TEMPORARY_MARKER).exists()


def test_prepare_deletes_only_folders_it_marked_and_refuses_a_symlinked_out(tmp_path) -> None:
    """The probe's cases: a prepare deleted the user's sib/data.partial-mine and data.replaced-2024
    (name patterns), an --out of 'nyud?' deleted nyudX's folders (the name used as a glob), and
    --force on a symbolic link replaced the link by a folder and left a stray link."""
    mat, splits = _labeled(tmp_path / "labeled.mat"), _split(tmp_path / "splits.mat", [1, 2], [3, 4])
    users = [tmp_path / name for name in ("data.partial-mine", "data.replaced-2024", "data.partial-123")]
    for folder in users:
        folder.mkdir()
        (folder / "mine.txt").write_text("mine")
    prepare_nyud(mat, tmp_path / "data", splits, progress=False)
    assert all((folder / "mine.txt").read_text() == "mine" for folder in users)

    others = tmp_path / "nyudX.partial-1"  # a dead prepare of nyudX: not nyud?'s to clean
    others.mkdir()
    own_folder(others, "partial", tmp_path / "nyudX")
    prepare_nyud(mat, tmp_path / "nyud?", splits, progress=False)
    assert others.is_dir() and is_prepared(tmp_path / "nyud?")

    target = prepare_nyud(mat, tmp_path / "real", splits, progress=False)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ValueError, match=r"^--out .*link is a symbolic link \(to .*real\); give the folder it points to"):
        prepare_nyud(mat, link, splits, force=True, progress=False)
    assert link.is_symlink() and is_prepared(target)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("link", "real"))) == ["link", "real"]


def test_a_truncated_mat_padded_back_to_its_size_gives_one_line(tmp_path) -> None:
    """The issue's case ended in h5py's KeyError traceback from the class names."""
    good = _labeled(tmp_path / "good.mat", frames=6)
    data = good.read_bytes()
    for keep in (len(data) // 2, len(data) * 3 // 4):
        bad = tmp_path / f"bad{keep}.mat"
        bad.write_bytes(data[:keep] + b"\0" * (len(data) - keep))
        with pytest.raises(ValueError,
                           match=rf"^{bad}.*truncated or corrupt .*download nyu_depth_v2_labeled.mat again$"):
            prepare_nyud(bad, tmp_path / "out", _split(tmp_path / "s.mat", [1, 2], [3, 4]), progress=False)
        assert not (tmp_path / "out").exists()


def test_a_fine_tuned_checkpoint_given_as_a_backbone_is_named_for_what_it_is(tmp_path) -> None:
    """The issue's case ended in ``KeyError: 'arch'`` inside the dense model builder."""
    head = tmp_path / "last.pt"
    save_atomic({"model": {}, "meta": {"task": "seg", "backbone_meta": {"arch": "resnet18"}}}, head)
    with pytest.raises(ValueError, match=r"is a fine-tuned dense model \(last.pt of finetune/nyud.py\); expected a "
                                         r"pretrained backbone"):
        dense_model_from_backbone(str(head), 13)


def test_resume_into_another_commands_folder_names_what_is_there(tmp_path) -> None:
    """The probe's case: pretraining --resume into a fine-tuning's folder listed a long settings
    diff instead of saying what the folder holds."""
    finetuned = tmp_path / "seg"
    save_atomic({"model": {}, "meta": {"task": "seg", "backbone_meta": {"arch": "resnet18"}}}, finetuned / "last.pt")
    with pytest.raises(ValueError, match=rf"^--resume found {finetuned / 'last.pt'}, a fine-tuned dense model "
                                         r"\(last.pt of finetune/nyud.py\), where this command writes a pretrained "
                                         r"backbone .*; choose another --out$"):
        run_pretraining(resolve_config("fp", _tiny(finetuned, resume=True)))


def test_a_checkpoint_of_nan_weights_is_named_as_the_cause(tmp_path) -> None:
    """The probe's case: NaN weights given as --init-from or --backbone trained, then blamed the
    learning rate ("loss became nan ... rerun with a lower --lr")."""
    good = tmp_path / "good"
    run_pretraining(resolve_config("fp", _tiny(good)))
    checkpoint = load_checkpoint(good / "last.pt")
    checkpoint["model"]["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    save_atomic(checkpoint, bad)
    message = f"^{bad} holds non-finite weights \\(NaN or inf in layer2.0.conv1.weight\\), nothing can start from it"
    with pytest.raises(ValueError, match=message):
        run_pretraining(resolve_config("fp", _tiny(tmp_path / "continued", init_from=str(bad))))
    with pytest.raises(ValueError, match=message):
        dense_model_from_backbone(str(bad), 13)


def test_frames_not_divisible_by_the_output_stride_are_evaluated_padded(tmp_path) -> None:
    """The probe's case: 120x160 frames with --crop 64x96 --head deeplabv3plus --output-stride 16
    trained, saved, then failed at evaluation ("divisible by 16").  Here 24x40 frames (neither side
    divides by 16): evaluation pads and crops back, and its metrics cover every test pixel."""
    from cmim_dense.engine.finetune import run_finetuning
    from cmim_dense.engine.finetune_config import resolve_finetune_config

    rng = np.random.default_rng(0)
    mat = tmp_path / "odd.mat"
    write_labeled_mat(mat, rng.integers(0, 255, (4, 24, 40, 3), dtype=np.uint8),
                      rng.uniform(1, 5, (4, 24, 40)).astype(np.float32), rng.integers(1, 895, (4, 24, 40)),
                      names=nyud_meta().raw_names)
    data = prepare_nyud(mat, tmp_path / "nyud", _split(tmp_path / "s.mat", [1, 2], [3, 4]), progress=False)
    run_pretraining(resolve_config("fp", _tiny(tmp_path / "backbone")))
    for task in ("seg", "depth"):
        result = run_finetuning(resolve_finetune_config({
            "task": task, "backbone": str(tmp_path / "backbone" / "best.pt"), "data": str(data), "iters": 2,
            "batch_size": 2, "crop": (16, 32), "output_stride": 16, "head": "deeplabv3plus", "decoder_channels": 8,
            "out": str(tmp_path / task), "progress_bar": False}))
        written = json.loads((tmp_path / task / "metrics.json").read_text())
        assert written["eval_resolution"] == [24, 40], task
    assert 0 <= written["rmse"] < 10 and result is not None


def test_json_files_are_strict_and_nan_reads_back_as_null(tmp_path) -> None:
    """metrics.json held 27 bare NaN (IoU of classes absent from the test set), not JSON."""
    record = {"miou": 0.5, "per_class_iou": [0.25, float("nan")], "loss": float("inf"), "nested": {"x": float("-inf")}}
    write_json(tmp_path / "metrics.json", record)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"miou": 0.5, "per_class_iou": [0.25, None], "loss": None, "nested": {"x": None}}
    assert json.loads(strict_json([1.0, float("nan")])) == [1.0, None]


def _tiny(out: Path, **overrides) -> dict:
    settings = {"epochs": 1, "batch_size": 8, "image_size": 32, "synthetic_samples": 24, "optimizer": "sgd",
                "lr": 1e-2, "out": str(out), "progress_bar": False}
    return {**settings, **overrides}


def test_divergence_saves_nothing_non_finite_and_init_from_continues(tmp_path) -> None:
    """A diverging run (the issue: its named last.pt held weights of 1.3e22 and a NaN validation
    loss, and the advice to --resume with a lower --lr was refused) must stop before saving a
    non-finite state, name only a checkpoint that exists, and --init-from must carry on from it."""
    good = tmp_path / "good"
    run_pretraining(resolve_config("fp", _tiny(good)))
    in_training = tmp_path / "in_training"  # from finite weights, the first huge step makes the next loss NaN
    with pytest.raises(FloatingPointError, match=r"^loss became (nan|inf) at step 1 \(epoch 1\); nothing was saved "
                                                 r"before it: rerun with a lower --lr$"):
        run_pretraining(resolve_config("fp", _tiny(in_training, lr=1e30, init_from=str(good / "last.pt"))))
    at_epoch_end = tmp_path / "at_epoch_end"  # one step per epoch: every training loss is finite, the weights are not
    with pytest.raises(FloatingPointError, match=r"^the weights or the validation loss \((nan|inf)\) became "
                                                 r"non-finite in epoch 1; nothing was saved before it"):
        run_pretraining(resolve_config("fp", _tiny(at_epoch_end, epochs=2, batch_size=16, lr=1e30)))
    assert not (in_training / "last.pt").exists() and not (at_epoch_end / "last.pt").exists()
    named = str(divergence("loss became nan at step 9 (epoch 2)", good, INIT_FROM_HINT))
    assert named == (f"loss became nan at step 9 (epoch 2); nothing of it was saved and {good / 'last.pt'} is the last "
                     f"finite state: continue from it with a lower --lr in a new folder (--init-from "
                     f"{good / 'last.pt'} --lr LOWER --out NEW)")

    continued = tmp_path / "continued"  # the advice, followed: the good weights, another learning rate
    run_pretraining(resolve_config("fp", _tiny(continued, lr=1e-9, init_from=str(good / "last.pt"))))
    fresh = tmp_path / "fresh"  # the same run without --init-from: from the seed's initial weights
    run_pretraining(resolve_config("fp", _tiny(fresh, lr=1e-9)))
    start = load_checkpoint(good / "last.pt")["model"]["fc.weight"]
    moved = {run: float((load_checkpoint(run / "last.pt")["model"]["fc.weight"] - start).abs().max())
             for run in (continued, fresh)}
    assert moved[continued] < 1e-6 < 1e-3 < moved[fresh], moved
    with pytest.raises(ValueError, match=r"--init-from .* holds a resnet18 with 13 classes; this run trains a "
                                         r"resnet18_cifar"):
        run_pretraining(resolve_config("fp", _tiny(tmp_path / "other", arch="resnet18_cifar",
                                                   init_from=str(good / "last.pt"))))


def test_a_kill_while_best_pt_is_written_is_redone_by_resume(tmp_path, monkeypatch) -> None:
    """The probe's case: a kill while epoch 3's best.pt is written, then --resume.  best.pt,
    metrics.jsonl and last.pt must end as an uninterrupted run's.  Catches last.pt written before
    the files it vouches for (the resume then found the run finished and kept epoch 2's best.pt and
    two lines of metrics)."""
    import cmim_dense.engine.pretrain as pretrain

    settings = {"epochs": 3, "synthetic_samples": 48, "synthetic_val_samples": 13, "image_size": 16,
                "batch_size": 16, "cmim_nce_n": 8, "progress_bar": False}
    run_pretraining(resolve_config("irnet+cmim", {**settings, "out": str(tmp_path / "whole")}))
    assert load_checkpoint(tmp_path / "whole" / "best.pt")["meta"]["epoch"] == 3  # the case needs a best last epoch

    def killed_in_epoch_3s_best(state: dict, path: Path) -> None:
        if path.name == "best.pt" and state["meta"]["epoch"] == 3:
            raise KeyboardInterrupt
        save_atomic(state, path)

    monkeypatch.setattr(pretrain, "save_atomic", killed_in_epoch_3s_best)
    killed = {**settings, "out": str(tmp_path / "killed")}
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(resolve_config("irnet+cmim", killed))
    monkeypatch.undo()
    run_pretraining(resolve_config("irnet+cmim", {**killed, "resume": True}))
    for name in ("best.pt", "last.pt"):
        a, b = (load_checkpoint(tmp_path / run / name) for run in ("whole", "killed"))
        assert a["meta"]["epoch"] == b["meta"]["epoch"] == 3, name
        assert all(torch.equal(value, b["model"][key]) for key, value in a["model"].items()), name
    timing = {"images_per_s", "epoch_time_s"}
    a, b = ([{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("whole", "killed"))
    assert len(a) == 3 and a == b


@pytest.mark.parametrize("flags, message", [
    ({"lr": float("inf")}, "--lr must be a finite number of at most 3.4e+38 in size, got inf"),
    ({"lr": 1e39, "optimizer": "adam"}, "--lr must be a finite number of at most 3.4e+38 in size, got 1e+39"),
    ({"weight_decay": float("nan")}, "--weight-decay must be a finite number of at most 3.4e+38 in size, got nan"),
    ({"warmup": float("inf")}, "--warmup must be a finite number"),  # not the field's name, --warmup-epochs
    ({"seed": -1}, "--seed must be between 0 and 4294967295, got -1"),
    ({"cmim_lambda": float("nan")}, "--cmim-lambda"),
])
def test_out_of_range_flags_are_refused_up_front(flags, message, tmp_path) -> None:
    """The probe's cases: overflow deep in the optimizer (--lr 1e39), a flag that does not exist
    named (--warmup-epochs), a seed error naming no flag after --out was made."""
    method = "irnet+cmim" if "cmim_lambda" in flags else "irnet"
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config(method, _tiny(tmp_path / "run", **flags))
    assert not (tmp_path / "run").exists()


def test_a_cmim_flag_on_a_method_without_cmim_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"--cmim-lambda only apply to a method with CMIM: use --method irnet\+cmim"):
        resolve_config("irnet", _tiny(tmp_path / "run", cmim_lambda=2.0))


def test_pretrain_cli_prints_one_line_for_faults(entry_script, tmp_path, capsys) -> None:
    """pretrain/run.py's main() in this process (an interpreter per case took 4 s each): status 2,
    one line naming the fault, nothing written."""
    pretrain = entry_script("pretrain/run")
    for args, expected in (
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--cmim-lambda", "nan", "--method", "irnet+cmim"], "--cmim-lambda"),
        (["--init-from", str(tmp_path / "missing.pt")], "does not exist"),
    ):
        status = pretrain.main([*PRETRAIN, "--out", str(tmp_path / "r"), *args])
        error = capsys.readouterr().err
        assert status == 2 and error.count("\n") == 1 and expected in error, error
        assert not (tmp_path / "r" / "last.pt").exists()


def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for k in range(4):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{k}.png")
    return root


def test_an_image_over_pils_pixel_limit_is_named_in_one_line(tmp_path, monkeypatch) -> None:
    """The probe's case: a 20000x9000 PNG in an ImageNet-style folder gave PIL's
    DecompressionBombError traceback.  PIL's limit is lowered so that a 100x100 image crosses it."""
    from PIL import Image

    from cmim_dense.data.classification import read_image

    path = tmp_path / "huge.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # PIL refuses above twice this
    with pytest.raises(ValueError, match=f"^{path} cannot be decoded as an image \\(Image size \\(10000 pixels\\) "
                                         "exceeds limit.*; replace or delete the file$"):
        read_image(str(path))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_image_is_named_in_one_line_with_or_without_workers(workers, python, root, tmp_path, entry_script,
                                                                      capsys) -> None:
    """The issue's case: with workers a multi-line DataLoader traceback; without, a line that did
    not say what to do.  With workers the command runs as a process of its own (all that its loader
    workers print reaches its stderr); without, its main() runs in this process."""
    data = _image_folder(tmp_path / "imagenet")
    bad = data / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    flags = ["--method", "bnn", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--image-size", "16",
             "--workers", workers, "--out", str(tmp_path / "run"), "--no-progress"]
    if workers == "0":
        status, stderr = entry_script("pretrain/run").main(flags), capsys.readouterr().err
    else:
        result = subprocess.run([python, str(root / "pretrain" / "run.py"), *flags], capture_output=True, text=True)
        status, stderr = result.returncode, result.stderr
    assert status == 2, stderr[-2000:]
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"error: {bad} cannot be decoded as an image (")
    assert "replace or delete" in stderr


def test_system_errors_read_as_a_path_a_reason_and_what_to_check() -> None:
    from cmim_dense.cli import user_message

    message = user_message(PermissionError(13, "Permission denied", "/data/nyud/meta.json"))
    assert message == ("cannot use /data/nyud/meta.json: permission denied; check that the path exists and that "
                       "you may read and write there")
    assert user_message(FileNotFoundError("checkpoint x.pt does not exist")) == "checkpoint x.pt does not exist"


def test_ctrl_c_prints_one_line_and_keeps_the_checkpoint(python, root, tmp_path) -> None:
    """The probe's case: Ctrl-C ended in 77 lines of traceback.  Now one line, status 130, and the
    checkpoint written before it reads back."""
    import signal

    from cmim_dense.cli import INTERRUPTED

    command = [python, str(root / "pretrain" / "run.py"), "--method", "irnet", "--epochs", "50", "--synthetic-samples",
               "160", "--batch-size", "32", "--image-size", "32", "--no-progress", "--out", str(tmp_path / "run")]
    # SIGINT at its default in the child: a suite started in the background (nohup ... &) ignores it,
    # and an ignored SIGINT is inherited, so Python would never raise KeyboardInterrupt
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.readline().startswith("[irnet] epoch 1/50")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate()
    assert process.returncode == 130 and stderr == INTERRUPTED + "\n", stderr
    assert 1 <= load_checkpoint(tmp_path / "run" / "last.pt")["meta"]["epoch"] < 50  # --resume: test_resume.py


def test_a_full_disk_is_one_line_naming_the_file_and_the_previous_file_survives(entry_script, tmp_path, monkeypatch,
                                                                               capsys) -> None:
    """The probe's case: a full disk during a save gave torch's 48-line "unexpected pos" error.  Every
    temporary file here is opened on /dev/full (the kernel's ENOSPC on each write)."""
    import tempfile

    import cmim_dense.checkpoint_io as checkpoint_io
    from cmim_dense.cli import user_message

    out = tmp_path / "run"
    assert entry_script("pretrain/run").main(["--method", "irnet", "--epochs", "1", "--synthetic-samples", "32",
                                              "--batch-size", "16", "--image-size", "16", "--no-progress",
                                              "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()

    def on_a_full_disk(prefix: str = "", suffix: str = "", dir: str | None = None) -> tuple[int, str]:
        return os.open("/dev/full", os.O_WRONLY), str(Path(dir) / f"{prefix}full{suffix}")

    monkeypatch.setattr(checkpoint_io.tempfile, "mkstemp", on_a_full_disk)
    with pytest.raises(OSError) as full:
        save_atomic({"model": {"w": torch.zeros(1000)}, "meta": {}}, out / "last.pt")
    assert full.value.errno == 28 and full.value.filename == str(out / "last.pt")
    capsys.readouterr()
    assert entry_script("pretrain/run").main(["--method", "irnet", "--epochs", "2", "--synthetic-samples", "32",
                                              "--batch-size", "16", "--image-size", "16", "--no-progress",
                                              "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {tmp_path / 'other'}")
    monkeypatch.setattr(checkpoint_io.tempfile, "mkstemp", tempfile.mkstemp)
    assert (out / "last.pt").read_bytes() == before
    assert user_message(full.value) == (f"cannot write {out / 'last.pt'}: no space left on device; free some space "
                                        "there and rerun (the files written before are kept)")


def finish_despite_kills(command: list[str], out: Path, seed: int, kills: int = 3, env: dict | None = None,
                         latest: float = 2.0, after_first_save: float = 1.0) -> tuple[int, int]:
    """Run ``command --out out``, SIGKILL it at up to ``kills`` seeded random moments, each time starting
    it again (with ``--resume`` once a last.pt exists), then let it finish; returns how many kills
    landed (a run can end before its moment) and how many restarts resumed from a last.pt.

    The first kill comes within ``after_first_save`` seconds of the run's first last.pt, so that a
    restart resumes from a checkpoint however slow the machine; each later one at a moment counted
    from when the restarted run is set up (its config.json written, after the interpreter start, the
    imports and the data, whose time varies with the machine's load), up to ``latest`` seconds in."""
    import random
    import time

    moments, killed, resumed = random.Random(seed), 0, 0
    while True:
        resume = ["--resume"] if (out / "last.pt").exists() else []
        resumed += bool(resume)
        marker = out / ("last.pt" if killed == 0 else "config.json")
        written_before = marker.stat().st_mtime_ns if marker.exists() else None
        process = subprocess.Popen([*command, "--out", str(out), *resume], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=env)
        if killed < kills:
            while process.poll() is None and (not marker.exists() or marker.stat().st_mtime_ns == written_before):
                time.sleep(0.02)
            try:
                process.wait(timeout=moments.uniform(0.0, after_first_save if killed == 0 else latest))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                killed += 1
                continue
        assert process.wait() == 0, process.stderr.read()
        return killed, resumed


def test_kills_at_random_moments_then_resume_end_bit_identical(python, root, tmp_path, entry_script) -> None:
    """Pretraining killed -9 at seeded random moments of its training, resumed each time (at least once
    from a last.pt): the weights and memory banks end as an uninterrupted run's, and no temporary is left."""
    flags = ["--method", "rbnn+cmim", "--epochs", "4", "--synthetic-samples", "96", "--batch-size", "16",
             "--image-size", "32", "--cmim-nce-n", "8", "--no-progress"]
    # the uninterrupted reference in this process (its main(): no interpreter start), the killed runs as
    # processes of their own, on as many threads as this one
    assert entry_script("pretrain/run").main([*flags, "--out", str(tmp_path / "reference")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # its 4 epochs take about 9 s after set-up here, an epoch about 2 s: later kills up to 7 s in
    killed, resumed = finish_despite_kills([python, str(root / "pretrain" / "run.py"), *flags], tmp_path / "killed",
                                           seed=0, env=env, latest=7.0)
    assert killed >= 2 and resumed >= 1, (killed, resumed)
    a, b = load_checkpoint(tmp_path / "reference" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    assert all(torch.equal(value, b["model"][key]) for key, value in a["model"].items())
    assert all(torch.equal(bank["values"], b["cmim"]["banks"][site][side]["values"])
               for site, banks in a["cmim"]["banks"].items() for side, bank in banks.items())
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_finetuning_killed_at_random_moments_then_resumed_ends_bit_identical(python, root, tmp_path, entry_script,
                                                                            monkeypatch) -> None:
    """The same for fine-tuning, saving every 3 iterations so that kills land in saves too (the
    reference is finetune/nyud.py's main() in this process, the killed runs processes of their own)."""
    run_pretraining(resolve_config("fp", _tiny(tmp_path / "backbone", lr=1e-3)))
    monkeypatch.setenv("CMIM_DENSE_CACHE", str(tmp_path / "cache"))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    flags = ["--task", "seg", "--backbone", str(tmp_path / "backbone" / "best.pt"), "--iters", "45", "--save-every",
             "3", "--output-stride", "16", "--decoder-channels", "16", "--batch-size", "4", "--no-progress"]
    assert entry_script("finetune/nyud").main([*flags, "--out", str(tmp_path / "reference")]) == 0
    killed, resumed = finish_despite_kills([python, str(root / "finetune" / "nyud.py"), *flags], tmp_path / "killed",
                                           seed=1, env=env)
    assert killed >= 2 and resumed >= 1, (killed, resumed)
    a, b = load_checkpoint(tmp_path / "reference" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a["meta"]["iteration"] == b["meta"]["iteration"] == 45
    assert all(torch.equal(value, b["model"][key]) for key, value in a["model"].items())
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text())["miou"] == \
        json.loads((tmp_path / "killed" / "metrics.json").read_text())["miou"]
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_a_truncated_array_of_a_prepared_set_is_named_in_one_line(tmp_path) -> None:
    """numpy's own error ("mmap length is greater than file size") named no file and no remedy."""
    from cmim_dense.data.nyud import NYUDv2

    splits = _split(tmp_path / "s.mat", [1, 2], [3, 4])
    out = prepare_nyud(_labeled(tmp_path / "labeled.mat"), tmp_path / "nyud", splits, progress=False)
    images = out / "train" / "images.npy"
    intact = images.read_bytes()
    images.write_bytes(intact[:-100])
    with pytest.raises(ValueError, match=rf"^{images} cannot be read, the prepared set is truncated or corrupt .*; "
                                         r"prepare it again \(datasets/prepare_nyud.py --force\)$"):
        NYUDv2(out, "train").array("image")
    np.save(out / "test" / "labels40.npy", np.zeros((3, 8, 12), np.uint8))  # the test split has 2 frames
    with pytest.raises(ValueError, match="holds 3 frames, frames.npy 2: the prepared set is inconsistent"):
        NYUDv2(out, "test")[0]
    images.write_bytes(intact)
    depths = out / "train" / "depths.npy"  # the probe's cases: numpy's allow_pickle advice,
    np.save(depths, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=rf"^{depths} cannot be read, .* \(it holds Python objects, not a plain "
                                         r"array\); prepare it again"):
        NYUDv2(out, "train")[0]
    np.save(depths, np.zeros((2, 4, 4), np.float32))  # albumentations' shape advice naming no file
    with pytest.raises(ValueError, match=rf"^{depths} holds float32 frames of shape \(4, 4\), expected float32 "
                                         r"\(8, 12\) \(meta.json\): the prepared set is inconsistent"):
        NYUDv2(out, "train")[0]


def test_an_existing_run_is_refused_before_anything_is_built(entry_script, tmp_path, capsys) -> None:
    """The issue: ``finetune/nyud.py --out EXISTING`` answered after 31.7 s, the model and the data
    built first.  Now the answer comes before both: with a backbone and data that do not exist, the
    refusal is still the existing run's (and a --resume from other settings is refused as such)."""
    out = tmp_path / "run"
    out.mkdir()
    save_atomic({"model": {}, "meta": {"task": "seg", "config": {"lr": 1.0}}}, out / "last.pt")
    missing = ["--backbone", str(tmp_path / "no_backbone.pt"), "--data", str(tmp_path / "no_data")]
    finetune = entry_script("finetune/nyud")
    assert finetune.main(["--task", "seg", *missing, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out / 'last.pt'} exists; add --resume to continue that run or choose " \
                                      "another --out\n"
    assert finetune.main(["--task", "seg", *missing, "--out", str(out), "--resume"]) == 2
    assert "from a run with other settings (" in capsys.readouterr().err
    pretrain = entry_script("pretrain/run")
    assert pretrain.main(["--method", "irnet", "--data", str(tmp_path / "no_images"), "--out", str(out)]) == 2
    assert f"{out / 'last.pt'} exists; add --resume" in capsys.readouterr().err
