"""A frozen binary backbone on the packed 1-bit kernel during CPU fine-tuning and evaluation (issue #23):
the float path's features and metrics (up to float rounding and sign ties), a flag to turn it off, and
the float path kept where it must be."""

from __future__ import annotations

import json

import pytest
import torch

from cmim_dense.binary import LearnableBias
from cmim_dense.dense import create_dense_model, freeze_backbone
from cmim_dense.engine import resolve_config, run_pretraining
from cmim_dense.engine.finetune import evaluate_head_checkpoint, run_finetuning
from cmim_dense.engine.finetune_config import resolve_finetune_config
from cmim_dense.packed import conv as packed_conv


@pytest.fixture
def kernel_calls(monkeypatch) -> list[int]:
    """Counts the compiled kernel's calls (one per packed conv and forward)."""
    calls: list[int] = []
    native = packed_conv.xnor_conv2d_native

    def counting(*args, **kwargs):
        calls.append(1)
        return native(*args, **kwargs)

    monkeypatch.setattr(packed_conv, "xnor_conv2d_native", counting)
    return calls


def frozen_dense_model(method: str, seed: int) -> torch.nn.Module:
    """A frozen DeepLabV3+ over a ``method`` ResNet-18 whose BatchNorms have trained-looking statistics
    (at their init, gamma 1 and mean 0, exact zeros would meet every sign and make ties common; RBNN's
    gamma 1e-8 would make every feature ~1e-8 and the comparison vacuous) and whose learnable shifts
    before a sign (ReActNet's RSign) are not zero, as they are at init."""
    torch.manual_seed(seed)
    model = create_dense_model("resnet18", method, 3, "deeplabv3plus", 16, 16)
    for module in model.encoder.modules():
        if isinstance(module, LearnableBias):
            module.bias.data.normal_(0, 0.1)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return freeze_backbone(model).eval()


@pytest.mark.parametrize("method", ["bnn", "irnet", "rbnn", "reactnet"])
def test_a_frozen_encoder_runs_on_the_kernel_with_the_float_features(method: str, kernel_calls) -> None:
    """Catches: a frozen encoder that never reaches the kernel, a packed copy computing another function
    (a sign, shift, scale or BatchNorm lost in packing or fusing), a copy that keeps old weights after a
    state is loaded, and the kernel used where the float path must run (the flag off, an encoder being
    trained, CPU autocast)."""
    model, other = frozen_dense_model(method, 0), frozen_dense_model(method, 1)
    encoder = model.encoder
    x = torch.randn(2, 3, 64, 96)

    def features(packed: bool) -> list[torch.Tensor]:
        encoder.packed_inference = packed
        return encoder(x)

    float_features = features(False)
    assert not kernel_calls
    packed_features = features(True)
    assert len(kernel_calls) >= 15  # ResNet-18's 16 binary 3x3 convs (minus a BNN shortcut), each on the kernel
    for a, b in zip(float_features, packed_features):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    copy = encoder._packed.of(encoder.backbone)
    features(True)
    assert encoder._packed.of(encoder.backbone) is copy  # built once, not per forward

    encoder.load_state_dict(other.encoder.state_dict())  # the packed copy must follow the loaded weights
    kernel_calls.clear()
    loaded = features(True)
    assert kernel_calls
    reference = features(False)
    assert not torch.allclose(reference[-1], float_features[-1])
    for a, b in zip(reference, loaded):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())

    kernel_calls.clear()
    encoder.packed_inference = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoder(x)
    encoder.requires_grad_(True)  # unfrozen: trained, so in float with gradients
    encoder(x)[-1].sum().backward()
    assert not kernel_calls


@pytest.fixture(scope="module")
def irnet_backbone(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "irnet"
    run_pretraining(resolve_config("irnet", {"epochs": 1, "batch_size": 16, "image_size": 32, "synthetic_samples": 64,
                                             "out": str(out), "progress_bar": False}))
    return out / "best.pt"


def test_finetuning_on_the_kernel_gives_the_float_runs_head_and_metrics(irnet_backbone, tmp_path, kernel_calls,
                                                                         monkeypatch) -> None:
    """A frozen IR-Net fine-tune runs its backbone on the kernel by default and --no-packed-backbone
    keeps it in float; both train the same head and write the same metrics.json (sign ties aside), and
    --evaluate gives the same figures either way.

    Catches: the flag not reaching the encoder, a packed path that changes what the head learns
    from (features off by a scale, a shift or a stale copy), an evaluation on other features."""
    monkeypatch.setenv("CMIM_DENSE_CACHE", str(tmp_path / "cache"))
    runs = {}
    for packed in (True, False):
        kernel_calls.clear()
        runs[packed] = tmp_path / ("packed" if packed else "float")
        run_finetuning(resolve_finetune_config({
            "task": "seg", "backbone": str(irnet_backbone), "iters": 12, "out": str(runs[packed]),
            "output_stride": 16, "decoder_channels": 16, "batch_size": 4, "packed_backbone": packed,
            "progress_bar": False}))
        assert bool(kernel_calls) == packed
    metrics = {packed: json.loads((folder / "metrics.json").read_text()) for packed, folder in runs.items()}
    assert metrics[True]["miou"] == pytest.approx(metrics[False]["miou"], abs=2e-3)
    assert metrics[True]["pixel_acc"] == pytest.approx(metrics[False]["pixel_acc"], abs=2e-3)
    heads = {packed: torch.load(folder / "last.pt", weights_only=True)["model"] for packed, folder in runs.items()}
    for key, value in heads[False].items():
        if not key.startswith("encoder."):
            assert torch.allclose(heads[True][key], value, rtol=1e-3, atol=1e-5), key
    kernel_calls.clear()
    evaluated = {packed: evaluate_head_checkpoint(str(runs[True] / "last.pt"), out=str(tmp_path / f"eval{packed}"),
                                                  packed_backbone=packed) for packed in (True, False)}
    assert kernel_calls
    assert evaluated[True]["miou"] == pytest.approx(metrics[True]["miou"], abs=1e-9)
    assert evaluated[False]["miou"] == pytest.approx(evaluated[True]["miou"], abs=2e-3)
