"""The recipes of docs/architecture.md, each run through the real code: add a dense task, a head, a
method and a training objective by registering one entry, then use it by name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from cmim_dense.binary import Spec
from cmim_dense.checkpoint_io import load_checkpoint
from cmim_dense.data.synthetic_nyud import ensure_synthetic_nyud
from cmim_dense.dense import (HEADS, TASKS, DenseHead, DenseTask, Metric, create_dense_model, register_head,
                              register_task)
from cmim_dense.engine import resolve_config, run_pretraining
from cmim_dense.engine.finetune import run_finetuning
from cmim_dense.engine.finetune_config import resolve_finetune_config
from cmim_dense.losses import OBJECTIVES, Objective, register_objective
from cmim_dense.methods import RECIPES, get_recipe, register
from cmim_dense.metrics import DepthMeter
from cmim_dense.models import create_model
from cmim_dense.plots.seg_depth import seg_depth_chart

from .test_dense import save_backbone

TINY_FINETUNE = {"crop": (32, 48), "iters": 3, "batch_size": 2, "output_stride": 16, "decoder_channels": 16,
                 "head": "deeplabv3plus", "progress_bar": False}
TINY_PRETRAIN = {"epochs": 1, "synthetic_samples": 20, "image_size": 16, "batch_size": 4, "progress_bar": False}


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    """A tiny prepared layout of the built-in rooms (16 + 4 frames of 48x64)."""
    return ensure_synthetic_nyud(tmp_path_factory.mktemp("rooms"), train=16, test=4, height=48, width=64)


class LogDepth(DenseTask):
    """docs/architecture.md, "Add a dense task": depth regressed in log space, evaluated in metres."""

    name, title, target, display = "log_depth", "log depth", "depth", "metres"
    metrics = (Metric("rmse_log", "RMSE of ln d", higher_is_better=False),
               Metric("rmse", "RMSE (m)", higher_is_better=False))
    table = ("rmse_log",)
    printed = ("rmse_log", "rmse")

    def out_channels(self, settings):
        return 1

    def loss(self, output, target, settings):
        valid = target > 0
        return (output[:, 0][valid] - target[valid].log()).abs().mean()

    def meter(self, settings, dataset):
        return DepthMeter()

    def prediction(self, output):
        return output[:, 0].exp()

    def constant(self, train):
        return torch.tensor(train.mean_depth), f"{train.mean_depth:.3f} m everywhere"


@pytest.fixture
def log_depth_task():
    register_task(LogDepth)
    yield TASKS.get("log_depth")
    TASKS.remove("log_depth")


def test_add_a_task(log_depth_task, rooms, root, tmp_path, entry_script) -> None:
    """The registered task is a --task choice, fine-tunes and writes its metrics and baseline, and its
    column joins the results table beside the seg and depth runs of the same backbone."""
    backbone = tmp_path / "backbone.pt"
    save_backbone(backbone, "irnet")
    assert "log_depth" in entry_script("finetune/nyud").parse_args(["--task", "log_depth"]).task
    records = {}
    for task in ("seg", "depth", "log_depth"):
        config = resolve_finetune_config({**TINY_FINETUNE, "task": task, "backbone": str(backbone), "data": str(rooms),
                                          "out": str(tmp_path / "finetune" / task)})
        records[task] = run_finetuning(config)
    record = records["log_depth"]
    assert record["task"] == "log_depth" and record["rmse_log"] > 0 and record["baseline"]["rmse"] > 0
    assert json.loads((tmp_path / "finetune" / "log_depth" / "metrics.json").read_text())["rmse"] == record["rmse"]
    seg_depth_chart([tmp_path / "finetune"], tmp_path / "chart")
    header = (tmp_path / "chart.md").read_text().splitlines()[0]
    assert "| RMSE of ln d |" in header and "| mIoU (%) |" in header


def test_add_a_head(rooms, tmp_path) -> None:
    """A registered smp decoder builds over a binary backbone and is chosen by name, at the output
    stride it works at."""
    register_head(DenseHead("linknet", smp.Linknet, (32,), lambda output_stride, width: {},
                            "LinkNet: additive skip connections, a fixed-width decoder"))
    try:
        backbone = tmp_path / "backbone.pt"
        save_backbone(backbone, "bireal")
        config = resolve_finetune_config({"task": "seg", "backbone": str(backbone), "data": str(rooms),
                                          "head": "linknet", "crop": (32, 64)})
        assert config.output_stride == 32
        model = create_dense_model("resnet18", "bireal", 13, "linknet", 32).eval()
        assert isinstance(model, smp.Linknet) and model(torch.randn(1, 3, 64, 96)).shape == (1, 13, 64, 96)
    finally:
        HEADS.remove("linknet")


def test_add_a_method(tmp_path) -> None:
    """A registered recipe is a method by name, with +cmim too, and pretrains into a checkpoint that
    records it."""
    register(dataclasses.replace(get_recipe("bireal"), name="bireal_ste", description="Bi-Real with a clipped STE",
                                 input_binarizer=Spec("sign", estimator=Spec("ste_clip"))))
    try:
        model = create_model("resnet18", "bireal_ste+cmim")
        assert model.recipe.name == "bireal_ste+cmim" and model.recipe.cmim is not None
        run_pretraining(resolve_config("bireal_ste", {**TINY_PRETRAIN, "out": str(tmp_path / "run")}))
        meta = load_checkpoint(tmp_path / "run" / "best.pt")["meta"]
        assert meta["method"] == "bireal_ste" and meta["recipe"]["input_binarizer"]["estimator"]["name"] == "ste_clip"
    finally:
        RECIPES.remove("bireal_ste")


def test_add_an_objective(tmp_path) -> None:
    """A registered objective named by a recipe is the loss that recipe's pretraining minimises."""
    calls = []

    def focal(inputs):
        """Focal loss (Lin et al. 2017) with gamma = 2."""
        calls.append(inputs.logits.shape[0])
        log_p = F.log_softmax(inputs.logits, dim=1).gather(1, inputs.labels[:, None])[:, 0]
        return -((1 - log_p.exp()) ** 2 * log_p).mean()

    register_objective(Objective("focal", focal, reads_teacher_logits=False, description="focal loss, gamma 2"))
    fp = get_recipe("fp")
    register(dataclasses.replace(fp, name="fp_focal", training=dataclasses.replace(fp.training, loss="focal")))
    try:
        result = run_pretraining(resolve_config("fp_focal", {**TINY_PRETRAIN, "out": str(tmp_path / "run")}))
        assert calls == [4] * 5  # 20 images in batches of 4, one epoch
        assert result["history"][0]["train_loss"] > 0
    finally:
        RECIPES.remove("fp_focal")
        OBJECTIVES.remove("focal")
