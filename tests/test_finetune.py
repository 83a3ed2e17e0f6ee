"""finetune/nyud.py end to end on the built-in synthetic NYUD-v2: learns, resumes exactly, fails clearly."""

import json
import re
import signal
import subprocess
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cmim_dense.checkpoint_io import load_checkpoint
from cmim_dense.engine.finetune import iteration_batches, run_finetuning
from cmim_dense.engine.finetune_config import finetune_config, resolve_finetune_config

from .conftest import load_entry_script
from .test_dense import save_backbone
from .test_progress_lines import progress_lines

FAST = ["--output-stride", "16", "--decoder-channels", "32", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def finetune(python, root, cache, *args) -> None:
    """finetune/nyud.py's ``main()`` in this process, which must succeed (the SIGKILL and torchrun
    tests start it as a process of its own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CMIM_DENSE_CACHE", str(cache))
        assert load_entry_script("finetune/nyud").main(list(args)) == 0


def test_short_finetunes_beat_the_trivial_baselines(python, root, cache, backbone, tmp_path) -> None:
    """60 iterations of each head on the fp backbone beat the constant predictors recorded in the same
    metrics.json on every metric they report (measured: mIoU 15.5 % vs 3.1 %, pixel accuracy 61 % vs
    41 %, mean accuracy 22 % vs 7.7 %; RMSE 1.11 vs 1.30 m, abs rel 0.25 vs 0.34, delta1 0.52 vs
    0.41).  The depth head starts at the baseline (bias = mean training depth), so beating it means
    it learned from the features.  The baselines are checked by hand: the majority class predicted
    everywhere has recall 1 on that class and 0 on the others, so mean accuracy = 1 / classes
    present, and its IoU is its pixel share = pixel accuracy, so mIoU = pixel accuracy / classes
    present.

    Catches: a head that does not learn (frozen by mistake, zero learning rate, labels misaligned
    with images), a depth head not started at the mean or trained on the wrong target, a baseline
    computed on the wrong split or with the wrong reduction, mIoU not the mean of the per-class
    IoUs written beside it, metrics not reproduced by --evaluate."""
    finetune(python, root, cache, "--task", "seg", "--backbone", str(backbone), "--iters", "60", "--out",
             str(tmp_path / "seg"), *FAST)
    seg = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert seg["task"] == "seg" and seg["classes"] == 40 and seg["method"] == "fp"
    assert seg["backbone"] == str(backbone.resolve()) and seg["top1"] == load_checkpoint(backbone)["meta"]["top1"]
    assert seg["eval_resolution"] == [96, 128]
    baseline, present = seg["baseline"], seg["classes_present"]
    assert baseline["mean_acc"] == pytest.approx(1 / present)
    assert baseline["miou"] == pytest.approx(baseline["pixel_acc"] / present)
    assert seg["miou"] > 2 * baseline["miou"] and seg["pixel_acc"] > baseline["pixel_acc"] + 0.1
    assert seg["mean_acc"] > baseline["mean_acc"] + 0.05
    ious = [v for v in seg["per_class_iou"].values() if v is not None]  # null: in neither truth nor prediction
    assert len(seg["per_class_iou"]) == 40 and seg["miou"] == pytest.approx(sum(ious) / len(ious))

    finetune(python, root, cache, "--task", "depth", "--backbone", str(backbone), "--iters", "60", "--lr", "1e-3",
             "--out", str(tmp_path / "depth"), *FAST)
    depth = json.loads((tmp_path / "depth" / "metrics.json").read_text())
    baseline = depth["baseline"]
    assert depth["depth_gt"] == "depths"
    assert depth["rmse"] < 0.92 * baseline["rmse"] and depth["neg_log_rmse"] > baseline["neg_log_rmse"]
    assert depth["abs_rel"] < baseline["abs_rel"] and depth["delta1"] > baseline["delta1"]
    for record in (depth, baseline):
        assert record["neg_log_rmse"] == pytest.approx(-torch.tensor(record["rmse"]).log().item(), rel=1e-6)

    # --evaluate rebuilds the model from the head checkpoint alone and reproduces the metrics
    finetune(python, root, cache, "--evaluate", str(tmp_path / "seg" / "last.pt"), "--out", str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["miou"] == pytest.approx(seg["miou"])


def test_a_short_normals_finetune_beats_the_mean_normal(python, root, cache, backbone, tmp_path) -> None:
    """300 iterations of a surface-normals head on the fp backbone beat the constant mean training
    normal on every angular metric (measured: mean 25.7 vs 49.5 degrees, median 14.7 vs 24.2, within
    11.25 degrees 43 % vs 3 %, within 30 degrees 66 % vs 52 %; 60 iterations were not enough: mean 42.5,
    median 41.3).  (--evaluate, task-independent, is checked on the segmentation head above.)

    Catches: normals targets misaligned with the images (the flip negating the wrong axis, the
    transform dropping them), a loss that ignores the validity mask, predictions not normalised
    before the angles, a baseline that is not the mean normal of the training split."""
    finetune(python, root, cache, "--task", "normals", "--backbone", str(backbone), "--iters", "300", "--out",
             str(tmp_path / "normals"), *FAST)
    normals = json.loads((tmp_path / "normals" / "metrics.json").read_text())
    baseline = normals["baseline"]
    assert normals["task"] == "normals" and "mean training normal" in baseline["predictor"]
    assert normals["mean_angle"] < baseline["mean_angle"] - 10 and normals["median_angle"] < baseline["median_angle"]
    assert normals["within_11_25"] > baseline["within_11_25"] + 0.2 and normals["within_30"] > baseline["within_30"]
    assert normals["median_angle"] <= normals["mean_angle"] <= normals["rmse_angle"]


def test_sigkill_then_resume_is_bit_exact(python, root, cache, backbone, tmp_path) -> None:
    args = ["--task", "seg", "--backbone", str(backbone), "--iters", "12", "--save-every", "2", *FAST]
    finetune(python, root, cache, *args, "--out", str(tmp_path / "reference"))
    killed = tmp_path / "killed"
    env = {"CMIM_DENSE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    process = subprocess.Popen([python, str(root / "finetune" / "nyud.py"), *args, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def iteration() -> int:
        try:
            return load_checkpoint(killed / "last.pt")["meta"]["iteration"]
        except (FileNotFoundError, ValueError):
            return 0

    deadline = time.time() + 200
    while iteration() < 4 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 4 <= iteration() < 12
    finetune(python, root, cache, *args, "--out", str(killed), "--resume")
    a, b = load_checkpoint(tmp_path / "reference" / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["meta"]["iteration"] == b["meta"]["iteration"] == 12
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_bad_input_gives_one_line_errors(entry_script, cache, tmp_path, capsys, monkeypatch) -> None:
    """finetune/nyud.py's main() in this process: each bad input is status 2 and one line on stderr."""
    monkeypatch.setenv("CMIM_DENSE_CACHE", str(cache))
    script = entry_script("finetune/nyud")

    def error(*args: str) -> str:
        assert script.main(list(args)) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.endswith("\n") and captured.err.count("\n") == 1, captured
        return captured.err

    assert "does not exist" in error("--task", "seg", "--backbone", str(tmp_path / "none.pt"))
    cifar = tmp_path / "cifar.pt"
    save_backbone(cifar, arch="resnet18_cifar")
    assert "resnet18_cifar has no stride-2 stem" in error("--task", "seg", "--backbone", str(cifar))
    assert "must divide by the output stride 16" in error("--task", "seg", "--backbone", str(cifar), "--crop", "60x90")
    good = tmp_path / "bireal.pt"
    save_backbone(good)
    assert "is not a prepared NYUD-v2 layout" in error("--task", "depth", "--backbone", str(good), "--data",
                                                       str(tmp_path))
    assert error("--evaluate", str(good)) == (  # a pretraining checkpoint
        f"error: {good} is a pretrained backbone (best.pt or last.pt of pretrain/run.py); expected a fine-tuned dense "
        "model (last.pt of finetune/nyud.py)\n")
    assert error("--task", "seg", "--backbone", str(good), "--decoder-channels", "0") == (
        "error: --decoder-channels must be between 1 and 4096 (the paper's head: 256), got 0\n")
    out = tmp_path / "never"  # the probe's cases: a 2 TB allocation, a ZeroDivisionError after one iteration,
    for flags, message in ((["--decoder-channels", "1000000000"], "--decoder-channels must be between 1 and 4096"),
                           (["--save-every", "0"], "--save-every must be >= 1, got 0"),  # a refusal after training,
                           (["--task", "depth", "--depth-cap", "0"], "--depth-cap must be > 0 metres, got 0.0"),
                           (["--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),  # no flag named
                           (["--lr", "1e39"], "--lr must be a finite number of at most 3.4e+38 in size, got 1e+39")):
        assert message in error("--task", "seg", "--backbone", str(good), "--out", str(out), *flags), flags
    assert not out.exists()


def test_iteration_batches_resume_and_shard() -> None:
    full = list(iteration_batches(10, 4, seed=3, start=0, stop=6))
    assert list(iteration_batches(10, 4, seed=3, start=4, stop=6)) == full[4:]
    assert all(len(batch) == 4 for batch in full)
    epoch0 = [index for batch in full[:2] for index, _ in batch]
    assert len(set(epoch0)) == 8  # no repeats within an epoch
    ranks = [list(iteration_batches(10, 4, 3, 0, 6, rank, 2)) for rank in (0, 1)]
    for step in range(6):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(full[step])
    seeds = [seed for batch in full for _, seed in batch]
    assert len(set(seeds)) == len(seeds)


def test_torchrun_two_processes_finetune_and_evaluate_together(python, root, cache, backbone, tmp_path) -> None:
    """Each rank trains on its half of every global batch and evaluates its share of the test
    images; the metrics are reduced over ranks, so they equal the single-process evaluation."""
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {"CMIM_DENSE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "PATH": "/usr/bin:/bin"}
    out = tmp_path / "ddp"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",  # --standalone: a free port
                             str(root / "finetune" / "nyud.py"), "--task", "seg", "--backbone", str(backbone),
                             "--iters", "3", "--out", str(out), *FAST],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('"task": "seg"') == 1  # rank 0 reports
    ddp = json.loads((out / "metrics.json").read_text())
    assert load_checkpoint(out / "last.pt")["meta"]["iteration"] == 3
    finetune(python, root, cache, "--evaluate", str(out / "last.pt"), "--out", str(tmp_path / "single"))
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["miou"] == pytest.approx(single["miou"]) and ddp["pixel_acc"] == pytest.approx(single["pixel_acc"])


def test_a_finetunes_config_json_recreates_it(tmp_path, backbone, cache, monkeypatch, entry_script) -> None:
    """``finetune/nyud.py --config RUN/config.json`` gives the same head and the same metrics.json to
    the digit on CPU; a flag beside it replaces its value."""
    monkeypatch.setenv("CMIM_DENSE_CACHE", str(cache))
    finetune_script = entry_script("finetune/nyud")
    assert finetune_script.main(["--task", "seg", "--backbone", str(backbone), "--iters", "3", "--lr", "0.05",
                                 "--out", str(tmp_path / "a"), *FAST]) == 0
    recorded = tmp_path / "a" / "config.json"
    assert finetune_script.main(["--config", str(recorded), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in "ab")
    assert {k: v for k, v in a.items() if k != "train_seconds"} == {k: v for k, v in b.items() if k != "train_seconds"}
    first, second = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(value, second[key]) for key, value in first.items())
    replaced = finetune_config({"iters": 2, "out": str(tmp_path / "c")}, recorded)
    assert replaced.settings() == {**json.loads(recorded.read_text()), "iters": 2}


def test_eval_every_reports_during_the_run_and_changes_nothing(tmp_path, backbone, cache, monkeypatch, capsys) -> None:
    """``--eval-every 2`` of 4 iterations: the test metrics at iteration 2 in the history, TensorBoard
    and one line, and a head and metrics.json equal to a run without it (the evaluation's loader must
    not draw from the global RNG, which the head's dropout uses).  With a tiny ``--log-every`` the
    run also prints a progress line per iteration (tests/test_progress_lines.py checks pretraining)."""
    monkeypatch.setenv("CMIM_DENSE_CACHE", str(cache))
    settings = {"task": "seg", "backbone": str(backbone), "iters": 4, "output_stride": 16, "decoder_channels": 16,
                "batch_size": 2, "progress_bar": False}
    run_finetuning(resolve_finetune_config({**settings, "out": str(tmp_path / "plain")}))
    capsys.readouterr()
    run_finetuning(resolve_finetune_config({**settings, "out": str(tmp_path / "evaluated"), "eval_every": 2,
                                            "progress_bar": True, "log_every": 1e-9}))
    printed = capsys.readouterr().out
    assert re.search(r"^\[seg fine-tune\] iteration 2/4  miou 0\.\d{4}  pixel_acc 0\.\d{4}  mean_acc 0\.\d{4}$",
                     printed, re.MULTILINE)
    assert [(m["label"], m["step"], m["total"], m["cmim"]) for m in progress_lines(printed)] == [
        ("seg fine-tune", str(step), "4", None) for step in (1, 2, 3, 4)]
    plain, evaluated = load_checkpoint(tmp_path / "plain" / "last.pt"), load_checkpoint(tmp_path / "evaluated" / "last.pt")
    assert all(torch.equal(value, evaluated["model"][key]) for key, value in plain["model"].items())
    assert sorted(evaluated["history"][1]) == ["images_per_s", "iteration", "loss", "lr", "mean_acc", "miou",
                                               "pixel_acc"]
    plain_metrics, evaluated_metrics = ({k: v for k, v in json.loads((tmp_path / run / "metrics.json").read_text()).items()
                                         if k != "train_seconds"} for run in ("plain", "evaluated"))
    assert plain_metrics == evaluated_metrics
    events = EventAccumulator(str(tmp_path / "evaluated" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("finetune/miou")] == [2]
    assert [event.step for event in events.Scalars("finetune/lr")] == [1, 2, 3, 4]
    assert evaluated["history"][1]["miou"] == pytest.approx(events.Scalars("finetune/miou")[0].value)
