"""Binary dense heads (cmim_dense/dense/binary_head.py): every 3x3 conv of the decoder binary and fed an
informative sign, trained end to end, rebuilt from its checkpoint, exported and run on the 1-bit kernel."""

import json

import pytest
import torch
from torch import nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.dense import create_dense_model, dense_model_from_checkpoint
from cmim_dense.dense.binary_head import BinaryHeadUnit, ChannelBypass
from cmim_dense.export import PackedBinaryConv2d, export_model, load_exported
from cmim_dense.export.agreement import agreement
from cmim_dense.packed.model import runs_on_the_kernel

from .conftest import load_entry_script

FAST = ["--output-stride", "16", "--decoder-channels", "32", "--batch-size", "4", "--no-progress"]


@pytest.mark.parametrize(("head", "stride", "units"), [("deeplabv3", 16, 4), ("deeplabv3plus", 16, 5),
                                                       ("fpn", 32, 7), ("unet", 32, 10)])
def test_every_3x3_conv_of_the_head_is_binary_and_its_signs_are_informative(head: str, stride: int,
                                                                              units: int) -> None:
    """Over an fp backbone, whose features come out of a ReLU: every 3x3 conv of the decoder (ASPP branches,
    fusion convs, FPN and U-Net blocks; DeepLabV3+'s depthwise-separable ones too) is a BinaryConv2d with
    IR-Net's binarizers inside a unit with a real shortcut, no full-precision 3x3 conv is left, and each
    binary conv's input signs are mixed (a sign of a ReLU output would be +1 everywhere: the input norm
    centres it).  The 1x1 convs and the output layer stay full precision."""
    model = create_dense_model("resnet18", "fp", 5, head, stride, 32, binary_head="irnet")
    binary = [m for m in model.decoder.modules() if isinstance(m, BinaryConv2d)]
    assert len(binary) == units == sum(isinstance(m, BinaryHeadUnit) for m in model.decoder.modules())
    assert all(m.binary_inputs and m.binary_weights and m.kernel_size == (3, 3) for m in binary)
    assert not [m for m in model.decoder.modules()
                if type(m) is nn.Conv2d and m.kernel_size == (3, 3)]  # dense and depthwise 3x3 alike
    assert type(model.segmentation_head[0]) is nn.Conv2d
    positive: list[float] = []
    hooks = [m.input_binarizer.register_forward_hook(lambda _, __, out: positive.append((out > 0).float().mean().item()))
             for m in binary]
    model.train()
    model(torch.randn(4, 3, 64, 96))
    for hook in hooks:
        hook.remove()
    assert len(positive) == units and all(0.2 < p < 0.8 for p in positive), positive


def test_a_binary_head_needs_a_binary_method(entry_script, tmp_path, capsys) -> None:
    assert entry_script("finetune/nyud").main(["--task", "seg", "--backbone", str(tmp_path / "b.pt"),
                                               "--binary-head", "fp", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("error: --binary-head needs a binary method (its recipe binarizes the "
                                       "head), got 'fp'\n")
    assert not (tmp_path / "run").exists()


def test_a_binary_head_learns_rebuilds_from_its_checkpoint_and_runs_on_the_kernel(backbone, tmp_path,
                                                                                   monkeypatch) -> None:
    """60 iterations of an IR-Net-binarized DeepLabV3+ head over the fp backbone beat the constant predictor;
    ``--evaluate`` rebuilds it from last.pt alone (the checkpoint names the binary head) to the same figures;
    its 1-bit export runs the head's binary convs on the kernel, agreeing with the float model image by
    image (docs/export.md, sign ties)."""
    monkeypatch.setenv("CMIM_DENSE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "seg"
    finetune = load_entry_script("finetune/nyud").main
    assert finetune(["--task", "seg", "--backbone", str(backbone), "--iters", "60", "--binary-head", "irnet",
                     "--out", str(run), *FAST]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["binary_head"] == "irnet"
    assert metrics["miou"] > 1.5 * metrics["baseline"]["miou"], metrics
    assert metrics["pixel_acc"] > metrics["baseline"]["pixel_acc"] + 0.05, metrics

    assert finetune(["--evaluate", str(run / "last.pt"), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert (again["miou"], again["pixel_acc"]) == (metrics["miou"], metrics["pixel_acc"])

    model, meta = dense_model_from_checkpoint(run / "last.pt")
    assert meta["binary_head"] == "irnet" and runs_on_the_kernel(model.decoder)
    export_model(model, tmp_path / "seg.safetensors", meta)
    packed, _ = load_exported(tmp_path / "seg.safetensors", packed=True)
    head_convs = [m for m in packed.decoder.modules() if isinstance(m, PackedBinaryConv2d)]
    assert len(head_convs) == 5 and all(m.packed for m in head_convs)
    check = agreement(packed, model, torch.randn(8, 3, 64, 96), tolerance=1e-3)
    assert check.agreeing >= 6, check


def test_the_channel_bypass_averages_channel_groups_or_repeats_channels() -> None:
    """Hand-computed: 6 -> 3 channels are the means of pairs, 6 -> 12 each channel twice, 7 -> 4 the mean
    of the windows of channels 0-3 and 3-6, 3 -> 4 the channels 0, 1, 2, 0."""
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(ChannelBypass(3)(x), x.view(2, 3, 2, 3, 4).mean(2))
    assert torch.equal(ChannelBypass(12)(x), x.repeat_interleave(2, dim=1))
    seven = torch.randn(1, 7, 2, 2)
    torch.testing.assert_close(ChannelBypass(4)(seven), (seven[:, 0:4] + seven[:, 3:7]) / 2)
    assert torch.equal(ChannelBypass(4)(x[:, :3]), x[:, [0, 1, 2, 0]])
