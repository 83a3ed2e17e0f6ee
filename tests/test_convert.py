"""Published checkpoints -> backbone checkpoints (python -m cmim_dense.convert, load_backbone).

Each test writes a file in a repository's own layout (names, shapes, prefixes and the dict its
training script saves, from the facts in docs/backbones.md), with random values everywhere
(BatchNorm statistics, RBNN rotations and angles, ReActNet shifts), and checks that the converted
backbone gives the original network's logits.  The agreement with the official model code
itself was measured outside the test suite (docs/backbones.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor

import cmim_dense
from cmim_dense.binary.rotation import random_orthogonal
from cmim_dense.convert import main as convert_main
from cmim_dense.models import create_model, load_backbone

BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")


def randomized(arch: str, method: str, seed: int = 0, real_weights: bool = False) -> torch.nn.Module:
    """A model whose every parameter and buffer holds a random, non-trivial value."""
    generator = torch.Generator().manual_seed(seed)
    model = create_model(arch, method, num_classes=10, real_weights=real_weights)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked") or name.endswith("updated_at"):
                continue
            if name.endswith((".r1", ".r2")):
                tensor.copy_(random_orthogonal(tensor.shape[0], generator))
            elif name.endswith(("running_var", ".scale")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(".theta"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 3.0 - 1.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (0.2 if tensor.dim() > 1 else 1.0))
    return model.eval()


def irnet_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """htqin/IR-Net's names: the BatchNorm1d before fc is bn2; bn3 (BatchNorm1d(1000), unused) is saved too."""
    layout = {("bn2." + k[len("head_norm."):] if k.startswith("head_norm.") else k): v for k, v in state.items()}
    layout.update({f"bn3.{n}": torch.rand(1000) for n in ("weight", "bias", "running_mean", "running_var")})
    layout["bn3.num_batches_tracked"] = torch.tensor(7)
    return layout


def rbnn_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """lmbxmu/RBNN's names: conv.{weight, alpha (C,1,1), rotate (C,1,1,1), R1, R2} and IR-Net's heads."""
    official = {"r1": "R1", "r2": "R2", "theta": "rotate", "scale": "alpha"}
    layout = {}
    for key, value in irnet_layout(state).items():
        match = re.match(r"^(.*)\.weight_binarizer\.(\w+)$", key)
        if match is None:
            layout[key] = value
        elif match.group(2) in official:
            name = official[match.group(2)]
            layout[f"{match.group(1)}.{name}"] = value.reshape(-1, 1, 1) if name == "alpha" else value
    return layout


def single_conv_layout(state: dict[str, Tensor], react: bool) -> dict[str, Tensor]:
    """liuzechun's Bi-Real/ReActNet names: block layer{s}.{2b + k - 1} for conv k of our block b;
    Bi-Real's weight flat (N, 1), ReActNet's (O, I, 3, 3); ReActNet's move0/move1/prelu/move2."""
    layout = {}
    for key, value in state.items():
        match = BLOCK.match(key)
        if not match:
            layout[key] = value
            continue
        stage, block, member = match.group(1), int(match.group(2)), match.group(3)
        if member.startswith("downsample."):
            layout[f"layer{stage}.{2 * block}.{member}"] = value
            continue
        part = re.match(r"^(conv|bn|act)(\d)\.(.+)$", member)
        kind, k, rest = part.group(1), int(part.group(2)), part.group(3)
        prefix = f"layer{stage}.{2 * block + k - 1}."
        if kind == "bn":
            layout[prefix + "bn1." + rest] = value
        elif kind == "conv" and rest == "weight":
            layout[prefix + ("binary_conv.weight" if react else "binary_conv.weights")] = \
                value if react else value.reshape(-1, 1)
        elif kind == "conv" and rest == "input_binarizer.pre.bias":
            layout[prefix + "move0.bias"] = value
        else:  # RPReLU
            layout[prefix + {"shift_in.bias": "move1.bias", "prelu.weight": "prelu.weight",
                             "shift_out.bias": "move2.bias"}[rest]] = value
    return layout


def saved(fmt: str, state: dict[str, Tensor]) -> dict:
    """The dict each repository's training script saves around its state dict."""
    if fmt == "rbnn":  # no module. prefix; the parameters also as a list
        layout = rbnn_layout(state)
        return {"epoch": 150, "model": "resnet18_1w1a", "state_dict": layout, "best_prec1": 59.9,
                "best_prec5": 81.9, "parameters": [v for k, v in layout.items() if "running" not in k]}
    if fmt == "irnet":  # no published training script: a bare state dict
        return irnet_layout(state)
    layout = single_conv_layout(state, react=fmt == "reactnet")
    return {"epoch": 255, "state_dict": {f"module.{k}": v for k, v in layout.items()},
            "best_top1_acc": torch.tensor(65.9), "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0]}]}}


@pytest.mark.parametrize(("fmt", "arch", "real_weights"), [
    ("irnet", "resnet18", False), ("rbnn", "resnet18", False), ("bireal", "resnet18", False),
    ("reactnet", "resnet18", False), ("reactnet", "resnet18", True), ("bireal", "resnet34", False),
])
def test_conversion_gives_the_original_logits(fmt: str, arch: str, real_weights: bool, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    original = randomized(arch, fmt, real_weights=real_weights).double()
    source, out = tmp_path / f"{fmt}.pth.tar", tmp_path / "converted.pt"
    torch.save(saved(fmt, original.state_dict()), source)
    args = [str(source), "--format", fmt, "--out", str(out)] + (["--real-weights"] if real_weights else [])
    assert convert_main(args) == 0
    report = capsys.readouterr().out
    converted = cmim_dense.load_backbone(out).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), original(x), rtol=1e-12, atol=1e-12)
    meta = torch.load(out, weights_only=True)["meta"]
    assert (meta["method"], meta["arch"], meta["num_classes"], meta["real_weights"]) == (fmt, arch, 10, real_weights)
    assert meta["converted_from"]["format"] == fmt and len(meta["converted_from"]["sha256"]) == 64
    expected_top1 = {"rbnn": 0.599, "irnet": None}.get(fmt, 0.659)
    assert meta["top1"] == (None if expected_top1 is None else pytest.approx(expected_top1, abs=1e-6))
    assert f"{arch}, 10 classes" in report and ("exactly 0: 0 of" in report) != real_weights


def test_exact_zeros_are_counted_and_binarized_to_plus_one(tmp_path: Path) -> None:
    original = randomized("resnet18", "bireal")
    with torch.no_grad():
        original.layer1[0].conv1.weight[0, :2, 0, 0] = 0.0
        original.layer4[1].conv2.weight[5, 7, 1, 1] = 0.0
    source = tmp_path / "bireal.pth.tar"
    torch.save(saved("bireal", original.state_dict()), source)
    conversion = cmim_dense.models.convert_checkpoint(source, "bireal", tmp_path / "out.pt")
    assert conversion.zero_weights == 3
    assert conversion.binary_weights == sum(m.weight.numel() for n, m in original.named_modules()
                                            if n.endswith(("conv1", "conv2")) and n.startswith("layer"))
    binary = load_backbone(tmp_path / "out.pt").layer1[0].conv1.effective_weight()
    assert (binary[0, :2, 0, 0] > 0).all()  # sign(0) = +1


def test_torchvision_and_timm_files_convert_and_serve_as_backbones(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: a backbone file is read once (torch.load), whether ours or a torchvision state dict converted in
    memory.  Catches: the role check or the conversion reading the file again."""
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args[0]) or real_load(*args, **kwargs))
    reference = torchvision.models.resnet34(num_classes=7).eval()
    plain = tmp_path / "resnet34-tv.pth"
    torch.save(reference.state_dict(), plain)
    from safetensors.torch import save_file
    timm_file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(timm_file))
    x = torch.randn(1, 3, 64, 64)
    for path, fmt in ((plain, "torchvision"), (timm_file, "timm")):
        assert convert_main([str(path), "--format", fmt, "--out", str(tmp_path / f"{fmt}.pt")]) == 0
        for backbone in (path, tmp_path / f"{fmt}.pt"):  # the plain file is accepted directly too
            reads.clear()
            model = load_backbone(backbone)
            assert reads == ([] if backbone.suffix == ".safetensors" else [backbone])
            assert (model.arch, model.recipe.name) == ("resnet34", "fp")
            with torch.no_grad():
                assert torch.equal(model(x), reference(x))


def test_dense_model_takes_a_torchvision_state_dict(tmp_path: Path) -> None:
    from cmim_dense.dense import dense_model_from_backbone
    reference = torchvision.models.resnet18()
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "r18.pth")
    model, meta = dense_model_from_backbone(tmp_path / "r18.pth", out_channels=5, output_stride=16,
                                            decoder_channels=8)
    assert (meta["method"], meta["arch"]) == ("fp", "resnet18")
    backbone = model.encoder.backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in reference.state_dict().items() if not k.startswith("fc."))
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)


def test_finetune_out_default_is_named_after_the_backbone() -> None:
    from cmim_dense.engine.finetune_config import resolve_finetune_config
    first = resolve_finetune_config({"task": "seg", "backbone": "runs/a/irnet/best.pt"}).out
    second = resolve_finetune_config({"task": "seg", "backbone": "runs/b/irnet/best.pt"}).out
    converted = resolve_finetune_config({"task": "depth", "backbone": "weights/rbnn18.pt"}).out
    assert re.fullmatch(r"runs/finetune/irnet-[0-9a-f]{6}/seg", first) and first != second
    assert re.fullmatch(r"runs/finetune/rbnn18-[0-9a-f]{6}/depth", converted)


def test_wrong_format_depth_or_file_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rbnn = tmp_path / "rbnn.pth.tar"
    torch.save(saved("rbnn", randomized("resnet18", "rbnn").state_dict()), rbnn)
    bottleneck = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), bottleneck)
    cifar = tmp_path / "cifar.pth"
    torch.save(irnet_layout(create_model("resnet18_cifar", "irnet").state_dict()), cifar)
    ours = tmp_path / "ours.pt"
    torch.save({"model": {}, "meta": {"arch": "resnet18", "method": "fp", "num_classes": 3}}, ours)
    cases = [
        ([str(rbnn), "--format", "bireal"], "laid out as rbnn, not bireal: use --format rbnn"),
        ([str(rbnn), "--format", "torchvision"], "laid out as rbnn, not torchvision: use --format rbnn"),
        ([str(bottleneck), "--format", "timm"], "bottleneck ResNet (50/101/152)"),
        ([str(cifar), "--format", "irnet"], "3x3 stem (a CIFAR network)"),
        ([str(ours), "--format", "irnet"], "already a cmim-dense checkpoint"),
        ([str(tmp_path / "missing.pth"), "--format", "irnet"], "does not exist"),
    ]
    for args, message in cases:
        assert convert_main(args + ["--out", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert convert_main([str(rbnn), "--format", "xnor", "--out", str(tmp_path / "x.pt")]) == 2
    assert "unknown checkpoint format 'xnor'; valid: bireal, irnet, rbnn, reactnet, timm, torchvision" in \
        capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    torch.save(saved("bireal", randomized("resnet18", "bireal").state_dict()), tmp_path / "bireal.pth")
    with pytest.raises(ValueError, match="convert it first: python -m cmim_dense.convert --format bireal"):
        load_backbone(tmp_path / "bireal.pth")


@pytest.mark.parametrize("order", ["import cmim_dense, timm, segmentation_models_pytorch as smp",
                                   "import timm, segmentation_models_pytorch as smp; import cmim_dense"])
def test_backbones_by_name_in_timm_and_smp_after_import(order: str, tmp_path: Path) -> None:
    """No registration call: after ``import cmim_dense`` (before or after timm and smp),
    timm.create_model builds a features-only backbone from a classifier checkpoint, and smp
    builds a DeepLabV3 over a binary encoder by name."""
    model = randomized("resnet18", "rbnn")
    torch.save({"model": model.state_dict(), "meta": {"arch": "resnet18", "method": "rbnn", "num_classes": 10}},
               tmp_path / "rbnn.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = [f.sum().item() for f in model.forward_features(x)]
    torch.save(x, tmp_path / "x.pt")
    script = f"""
{order}
import torch
x = torch.load({str(tmp_path / 'x.pt')!r})
net = timm.create_model("cmim_resnet18_rbnn", checkpoint_path={str(tmp_path / 'rbnn.pt')!r}, features_only=True).eval()
with torch.no_grad():
    print([f.sum().item() for f in net(x)])
print(net.feature_info.reduction())
head = smp.DeepLabV3(encoder_name="cmim-resnet34-reactnet", encoder_weights=None, classes=3)
print(tuple(head(torch.randn(2, 3, 64, 64)).shape))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert eval(lines[0]) == pytest.approx(expected, rel=1e-6)
    assert lines[1:] == ["[2, 4, 8, 16, 32]", "(2, 3, 64, 64)"]
