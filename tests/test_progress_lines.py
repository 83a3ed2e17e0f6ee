"""Runs that talk where no bar is drawn (a batch job, ``> log``): a progress line every --log-every
seconds with the step, the loss and its CMIM term, images/s, the learning rate and the time left."""

import json
import re

import pytest

from cmim_dense.engine import resolve_config, run_pretraining
from cmim_dense.engine.finetune_config import resolve_finetune_config

LINE = re.compile(r"^\[(?P<label>[^\]]+)\] step (?P<step>\d+)/(?P<total>\d+)  loss (?P<loss>\d+\.\d{4})"
                  r"(?: \(CMIM (?P<cmim>\d+\.\d{4})\))?  (?P<rate>\d+\.\d) img/s  lr (?P<lr>\S+)  "
                  r"eta (?P<eta>\d+:\d\d:\d\d)$")


def progress_lines(text: str) -> list[re.Match]:
    return [match for line in text.splitlines() if (match := LINE.match(line))]


def pretrain(tmp_path, **overrides) -> None:
    settings = {"epochs": 2, "batch_size": 16, "image_size": 32, "synthetic_samples": 96, "optimizer": "sgd",
                "lr": 1e-2, "cmim_nce_n": 8, "out": str(tmp_path / "run"), "log_every": 1e-9}
    run_pretraining(resolve_config("irnet+cmim", {**settings, **overrides}))


def test_pretraining_prints_a_line_per_interval_when_no_bar_is_drawn(tmp_path, capsys) -> None:
    """Captured output is not a terminal (tqdm draws nothing): with an interval shorter than a step,
    every one of the 12 steps (96 images in batches of 16, 2 epochs) has its line, the learning rate
    of a line equals the schedule's that metrics.jsonl records after the same step, and the last line
    has nothing left to wait for.  Catches: silence in batch jobs, a step counter that restarts each
    epoch, the CMIM term missing, a learning rate read before the scheduler's step."""
    pretrain(tmp_path)
    lines = progress_lines(capsys.readouterr().out)
    assert [int(m["step"]) for m in lines] == list(range(1, 13))
    assert {m["label"] for m in lines} == {"irnet+cmim"} and {m["total"] for m in lines} == {"12"}
    assert all(m["cmim"] is not None and float(m["rate"]) > 0 for m in lines)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [float(lines[5]["lr"]), float(lines[11]["lr"])] == pytest.approx([r["lr"] for r in records], rel=1e-3)
    assert lines[-1]["eta"] == "0:00:00"
    # --log-every is no result setting: a resume with another interval is accepted (nothing left to do)
    pretrain(tmp_path, resume=True, log_every=5.0)


@pytest.mark.parametrize("quiet", [{"log_every": 0.0}, {"progress_bar": False}])
def test_no_lines_with_log_every_0_or_no_progress(tmp_path, capsys, quiet) -> None:
    pretrain(tmp_path, epochs=1, **quiet)
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and not progress_lines(printed)


def test_a_negative_interval_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="--log-every must be >= 0 seconds, got -1.0"):
        resolve_config("irnet", {"log_every": -1.0, "out": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="--log-every must be >= 0 seconds, got -1.0"):
        resolve_finetune_config({"task": "seg", "backbone": "b.pt", "log_every": -1.0})
