"""CMIM as the paper defines it: the six fidelity defects of issue #12, each pinned by a test
that fails on the code before the fix, and the CMIM diagnostics."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmim_dense import create_model
from cmim_dense.binary import BinaryConv2d
from cmim_dense.checkpoint_io import load_checkpoint
from cmim_dense.data import build_classification_data
from cmim_dense.engine import resolve_config, run_pretraining
from cmim_dense.engine.optim import build_optimizer
from cmim_dense.engine.pretrain import stage_configs
from cmim_dense.losses import CMIMLoss, layer_weights
from cmim_dense.losses.cmim import critic
from cmim_dense.methods import CMIMConfig, list_recipes
from cmim_dense.models import collect_taps, select_sites

BINARY_RECIPES = [recipe.name for recipe in list_recipes() if recipe.input_binarizer is not None]


def gradient_norm(loss: torch.Tensor, parameters: list[nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)))


@pytest.mark.parametrize("method", BINARY_RECIPES)
def test_cmim_gradient_is_well_scaled_at_initialisation(method: str) -> None:
    """Defect 1: CMIM's gradient over the backbone is within [1e-3, 10] of the task loss's.

    Catches a tapped latent that includes a rescale between BatchNorm and sign (RBNN's
    per-sample standardization with BN gamma 1e-8 gave a ratio of 1e6)."""
    torch.manual_seed(0)
    model = create_model("resnet18", f"{method}+cmim", num_classes=10)
    sites = select_sites(model, "stages")
    modules = dict(model.named_modules())
    cmim = CMIMLoss({site: modules[site].in_channels for site in sites}, 100, CMIMConfig(n_nce=32))
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with collect_taps(model, sites) as taps:
        logits = model(images)
    parameters = list(model.parameters())
    ratio = gradient_norm(cmim(taps, torch.arange(8)).total, parameters) / gradient_norm(
        F.cross_entropy(logits, labels), parameters)
    assert 1e-3 <= ratio <= 10


def test_rbnn_cmim_batchnorm_stays_bounded_over_eight_sgd_steps(tmp_path) -> None:
    """Defect 1: 8 SGD steps of rbnn+cmim at its recipe's settings leave every BatchNorm
    parameter below 100 in magnitude (the exploding CMIM gradient drove them to 1e12)."""
    config = resolve_config("rbnn+cmim", {"out": str(tmp_path), "max_steps": 8, "epochs": 1,
                                          "synthetic_samples": 512, "image_size": 32, "progress_bar": False})
    assert config.optimizer == "sgd"
    run_pretraining(config)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    model = create_model("resnet18", "rbnn+cmim", num_classes=checkpoint["meta"]["num_classes"])
    model.load_state_dict(checkpoint["model"])
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
    largest = max(max(m.weight.abs().max().item(), m.bias.abs().max().item()) for m in norms)
    assert largest < 100


def test_rbnn_tap_is_centred_and_its_cmim_gradient_ignores_the_activation_scale() -> None:
    """Defect 1: RBNN's a_F is the per-sample centred input (sign(a_F) = a_B) and the gradient
    reaching it from a_B does not grow as the input shrinks; the binarizer's own (task) gradient
    keeps RBNN's 1/std factor."""
    conv = create_model("resnet18", "rbnn").layer1[0].conv1
    binarizer = conv.input_binarizer
    torch.manual_seed(0)
    x = torch.randn(2, 64, 4, 4)
    grads = {}
    for scale in (1.0, 1e-6):
        inputs = (x * scale).requires_grad_()
        latent = binarizer.pre(inputs)
        anchor = binarizer.sign_past_rescale(latent, binarizer.rescale(latent))
        expected = inputs - inputs.mean(dim=(1, 2, 3), keepdim=True)
        assert torch.allclose(latent, expected) and torch.equal(anchor, torch.where(expected >= 0, 1.0, -1.0))
        grads[scale] = torch.autograd.grad(anchor.sum(), inputs)[0]
        task = torch.autograd.grad(binarizer(inputs).sum(), inputs)[0]
        grads[f"task{scale}"] = task
    assert torch.allclose(grads[1.0], grads[1e-6], atol=1e-5)
    assert grads["task1e-06"].abs().max() > 1e5 * grads["task1.0"].abs().max()


def test_layer_weights_follow_eq_14() -> None:
    """Defect 2: sum over k = 1..K of L^k / beta^(K-1-k): the deepest layer weighs beta
    (the code gave it 1, so the effective lambda was lambda / beta)."""
    assert layer_weights(4, 2.0) == [0.25, 0.5, 1.0, 2.0]
    assert layer_weights(2, 3.0) == [1.0, 3.0]
    assert layer_weights(1, 2.0) == [2.0]


def test_cmim_total_is_lambda_times_weighted_layer_losses() -> None:
    """Eq. 14 end to end: the total equals lambda * sum_k w_k L^k with the per-layer losses it reports."""
    torch.manual_seed(0)
    config = CMIMConfig(lam=0.7, beta=2.0, tau=0.5, n_nce=6)
    model = create_model("resnet18", "irnet+cmim", num_classes=3)
    sites = select_sites(model, "stages")
    modules = dict(model.named_modules())
    loss_fn = CMIMLoss({site: modules[site].in_channels for site in sites}, 12, config)
    with collect_taps(model, sites) as taps:
        model(torch.randn(4, 3, 32, 32))
    out = loss_fn(taps, torch.tensor([0, 3, 6, 9]))
    layer_losses = [out.per_layer[site]["loss"] for site in sites]
    expected = 0.7 * (0.25 * layer_losses[0] + 0.5 * layer_losses[1] + 1.0 * layer_losses[2] + 2.0 * layer_losses[3])
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_rbnn_cifar_keeps_pytorch_init_and_imagenet_uses_tiny_gamma() -> None:
    """Defect 4: RBNN's official CIFAR ResNet-18 uses PyTorch's defaults (BN gamma 1); its
    ImageNet ResNet-18 starts every BatchNorm2d gamma at 1e-8."""
    cifar = create_model("resnet18_cifar", "rbnn", num_classes=10)
    imagenet = create_model("resnet18", "rbnn", num_classes=10)
    cifar_gammas = torch.cat([m.weight for m in cifar.modules() if isinstance(m, nn.BatchNorm2d)])
    imagenet_gammas = torch.cat([m.weight for m in imagenet.modules() if isinstance(m, nn.BatchNorm2d)])
    assert torch.equal(cifar_gammas, torch.ones_like(cifar_gammas))
    assert torch.equal(imagenet_gammas, torch.full_like(imagenet_gammas, 1e-8))


def test_xnorpp_scale_starts_at_mean_abs_of_the_final_weights() -> None:
    """Defect 5: Gamma_i = mean |W_i| of the weights the model ends up with (it was computed
    before the model's re-initialisation: mean Gamma 0.0147 against mean |W| 0.0333)."""
    model = create_model("resnet18", "xnorpp", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert convs
    for conv in convs:
        expected = conv.weight.detach().abs().mean(dim=(1, 2, 3))
        assert torch.allclose(conv.weight_binarizer.scale.detach().flatten(), expected)


def test_reactnet_weight_decay_follows_the_official_scripts(tmp_path) -> None:
    """Defect 6: ReActNet step 1 decays only 4-D parameters (conv kernels, per-channel shifts) by
    1e-5; step 2 decays nothing."""
    teacher = tmp_path / "teacher.pt"
    torch.save(create_model("resnet18", "fp", num_classes=10).state_dict(), teacher)
    config = resolve_config("reactnet", {"out": str(tmp_path / "run"), "teacher": str(teacher)})
    first, second = stage_configs(config)
    assert (first.stage, first.weight_decay, first.decay_scope) == (1, 1e-5, "conv")
    assert (second.stage, second.weight_decay) == (2, 0.0)
    model = create_model("resnet18", "reactnet", num_classes=10, real_weights=True)
    optimizer = build_optimizer(model, "adam", 1e-3, first.weight_decay, first.binary_weight_decay,
                                decay_scope=first.decay_scope)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        assert decay[id(parameter)] == (1e-5 if parameter.dim() == 4 else 0.0), name
    assert decay[id(model.layer1[0].conv1.weight)] == 1e-5 and decay[id(model.bn1.weight)] == 0.0
    assert decay[id(model.layer1[0].conv1.input_binarizer.pre.bias)] == 1e-5  # (1, C, 1, 1): 4-D
    explicit = resolve_config("reactnet", {"out": str(tmp_path / "run2"), "teacher": str(teacher),
                                           "weight_decay": 1e-4})
    assert [c.weight_decay for c in stage_configs(explicit)] == [1e-4, 1e-4]  # a given value holds


def test_critic_values_hand_computed() -> None:
    """Eq. 10: h(s) = e^s / (e^s + N/M); h(0) with N/M = 1/2 is 2/3, h(ln 2) with N/M = 2 is 1/2."""
    assert critic(torch.tensor([0.0]), 0.5).item() == pytest.approx(2 / 3)
    assert critic(torch.tensor([0.6931471805599453]), 2.0).item() == pytest.approx(0.5)


def test_cmim_diagnostics_in_metrics(tmp_path) -> None:
    """The CMIM term per tapped layer, its mean positive and negative critic values and the
    normaliser are written to metrics.jsonl; positives score above negatives once the bank
    holds the latents (what a working critic does)."""
    config = resolve_config("irnet+cmim", {"out": str(tmp_path), "epochs": 2, "synthetic_samples": 64,
                                           "image_size": 32, "batch_size": 32, "progress_bar": False})
    run_pretraining(config)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    sites = ["layer1.1.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2"]
    for record in records:
        for site in sites:
            for key in ("loss", "positive", "negative", "log_z"):
                assert f"cmim/{site}/{key}" in record
            assert 0 < record[f"cmim/{site}/negative"] < record[f"cmim/{site}/positive"] < 1
        weighted = sum(w * record[f"cmim/{site}/loss"] for w, site in zip(layer_weights(4, 2.0), sites))
        assert record["train_cmim"] == pytest.approx(config.cmim.lam * weighted, rel=1e-4)


def mean_cosine_between_samples(embeddings: torch.Tensor) -> float:
    """The mean cosine between the unit embeddings of different samples."""
    cosines = embeddings @ embeddings.T
    return float(cosines[~torch.eye(len(embeddings), dtype=torch.bool)].mean())


@pytest.mark.parametrize("arch", ["resnet18", "resnet18_cifar"])
@pytest.mark.parametrize("method", BINARY_RECIPES)
def test_the_critic_reads_each_sample_for_every_method(method: str, arch: str) -> None:
    """Issue #21, item 1: the latent embedding e_F(a_F) the critic compares depends on the sample,
    whatever the method's activation scale, at initialisation and over 10 steps of task + CMIM
    loss on 26 images of the built-in world (mean cosine between different samples < 0.95), and
    after those steps the positive pairs score above the negatives at every site (measured:
    +0.02 to +0.36 in critic value; 32 px for the ImageNet layout, 16 px for the CIFAR one).

    Catches: RBNN's a_F of RMS 2e-8 read through a biased head (every sample's embedding the same,
    cosine 1.0000), a critic that never learns the positive (one side's head collapsed)."""
    size = 32 if arch == "resnet18" else 16
    data = build_classification_data("synthetic", size, 0, 26, 13)
    images = torch.stack([data.train[i][0] for i in range(26)])
    labels = torch.as_tensor(data.train.targets)
    torch.manual_seed(0)
    model = create_model(arch, f"{method}+cmim", num_classes=13).train()
    sites = select_sites(model, "stages")
    modules = dict(model.named_modules())
    cmim = CMIMLoss({site: modules[site].in_channels for site in sites}, 26, CMIMConfig(n_nce=12), labels=labels)
    optimizer = torch.optim.Adam([*model.parameters(), *cmim.parameters()], 1e-3)
    for step in range(11):
        with collect_taps(model, sites) as taps:
            logits = model(images)
        out = cmim(taps, torch.arange(26))
        for site in sites:
            latent = cmim.represent(site, taps[site])[1].detach()
            assert mean_cosine_between_samples(latent) < 0.95, (step, site)
        optimizer.zero_grad()
        (F.cross_entropy(logits, labels) + out.total).backward()
        optimizer.step()
    for site, stats in out.per_layer.items():
        assert stats["positive"] > stats["negative"], site


def test_each_sample_lands_in_its_own_bank_rows() -> None:
    """Issue #21, item 5: with momentum 0 a step writes e_B(a_B^i) and e_F(a_F^i) into row
    indices[i] of every site's binary and latent bank and touches no other row.

    Catches: bank updates written into the wrong rows (a shuffled or offset index), the two
    sides' embeddings banked the wrong way round."""
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", "irnet+cmim", num_classes=4).train()
    sites = select_sites(model, "stages")
    modules = dict(model.named_modules())
    cmim = CMIMLoss({site: modules[site].in_channels for site in sites}, 20, CMIMConfig(n_nce=4), momentum=0.0)
    indices = torch.tensor([17, 3, 9, 0, 12, 5])
    before = {site: {side: bank.values.clone() for side, bank in banks.items()} for site, banks in cmim.banks.items()}
    with collect_taps(model, sites) as taps:
        model(torch.randn(6, 3, 32, 32))
    cmim(taps, indices)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[indices] = False
    for site, banks in cmim.banks.items():
        embedded = dict(zip(("binary", "latent"), cmim.represent(site, taps[site])))
        for side, bank in banks.items():
            other = "latent" if side == "binary" else "binary"
            assert torch.allclose(bank.values[indices], embedded[side].detach(), atol=1e-6)
            assert not torch.allclose(bank.values[indices], embedded[other].detach(), atol=1e-2)
            assert torch.equal(bank.values[untouched], before[site][side][untouched])
