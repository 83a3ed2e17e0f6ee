"""Binary ResNet backbones for every recipe: shapes, strides, weight counts, taps, schedules."""

import pytest
import torch
import torchvision
from torch import nn

from cmim_dense import create_model, list_recipes
from cmim_dense.binary import BinaryConv2d
from cmim_dense.methods import base_method, get_recipe, has_cmim, split_method
from cmim_dense.methods.recipe import Recipe
from cmim_dense.models import collect_taps, select_sites

RECIPES = [r.name for r in list_recipes()]
BINARY = [name for name in RECIPES if name != "fp"]

# Binary 3x3 weights of ResNet-18 (hand-computed from the stage shapes):
# 4*64*64*9 + (128*64*9 + 3*128*128*9) + (256*128*9 + 3*256*256*9) + (512*256*9 + 3*512*512*9)
R18_BINARY_3X3 = 10_985_472
STEM = 64 * 3 * 7 * 7  # 9,408
DOWNSAMPLE_1X1 = 64 * 128 + 128 * 256 + 256 * 512  # 172,032
# ResNet-34: 6*64*64*9 + (128*64*9 + 7*128^2*9) + (256*128*9 + 11*256^2*9) + (512*256*9 + 5*512^2*9)
R34_BINARY_3X3 = 21_086_208


def weight_counts(model: nn.Module) -> tuple[int, int]:
    """(binarized, real-valued) conv weights."""
    binary = real = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if isinstance(module, BinaryConv2d) and module.binary_weights:
                binary += module.weight.numel()
            else:
                real += module.weight.numel()
    return binary, real


@pytest.mark.parametrize("method", RECIPES)
def test_forward_backward_reaches_every_parameter(method: str) -> None:
    model = create_model("resnet18", method, num_classes=5)
    for module in model.modules():  # move RBNN's theta off pi/2, where W gets no task gradient
        if hasattr(module, "theta"):
            with torch.no_grad():
                module.theta.fill_(1.0)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize(
    ("method", "binary", "real"),
    [
        ("fp", 0, R18_BINARY_3X3 + STEM + DOWNSAMPLE_1X1),
        ("bnn", R18_BINARY_3X3 + DOWNSAMPLE_1X1, STEM),
        ("xnor", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
        ("xnorpp", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
        ("bireal", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
        ("irnet", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
        ("rbnn", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
        ("reactnet", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
        ("dirnet", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
        ("s2bnn", R18_BINARY_3X3, STEM + DOWNSAMPLE_1X1),
    ],
)
def test_binary_and_real_weight_counts_resnet18(method: str, binary: int, real: int) -> None:
    assert weight_counts(create_model("resnet18", method)) == (binary, real)


def test_weight_counts_resnet34_and_cifar() -> None:
    assert weight_counts(create_model("resnet34", "irnet")) == (R34_BINARY_3X3, STEM + DOWNSAMPLE_1X1)
    # RBNN's CIFAR code: Layout A with a binary 1x1 downsample, 3x3 stem
    assert weight_counts(create_model("resnet18_cifar", "rbnn")) == (R18_BINARY_3X3 + DOWNSAMPLE_1X1, 64 * 3 * 9)


def test_reactnet_first_step_has_real_weights() -> None:
    model = create_model("resnet18", "reactnet", real_weights=True)
    assert weight_counts(model)[0] == 0
    assert sum(isinstance(m, BinaryConv2d) and m.binary_inputs for m in model.modules()) == 16


@pytest.mark.parametrize("method", ["fp", "bnn", "bireal", "irnet"])  # the four block/shortcut layouts
def test_dilated_backbone_is_the_undilated_one_sampled_at_its_stride(method: str) -> None:
    """Output stride 16 or 8 with the same weights: every feature map, sampled every
    (its reduction at stride 32 / its reduction now) positions, equals the stride-32 network's
    (the a trous identity: a stride-2 conv turned into stride 1 keeps its own dilation and every
    later conv of the stage doubles its dilation and padding, as torchvision does).

    It holds for both shortcut kinds: the Bi-Real average-pool shortcut, de-strided, averages the
    same 2x2 window at the input's spacing (a plain stride-1 pool, or none, would keep x[2i] instead
    of mean(x[2i], x[2i+1]), and a dense head would fine-tune another network).  RBNN is left out:
    its per-sample threshold is a mean over the whole feature map, which dilation enlarges.  In
    float64: in float32 a batch of one takes another conv kernel whose 1e-6 rounding flips the sign
    of a near-zero activation (seen with xnor), and one flipped sign changes everything after it.

    Catches: a dilation on the wrong conv (torchvision's convention has the first conv of a dilated
    stage keep the previous dilation), padding not scaled with the dilation, a stage left strided,
    a shortcut still strided (shape clash), a de-strided pooled shortcut that does not average,
    wrong feature_info reductions, a de-strided pool that counts the padding at an odd edge."""
    reference = create_model("resnet18", method, num_classes=3).double().eval()
    x = torch.randn(1, 3, 72, 64, dtype=torch.float64)  # 72 rows: odd maps (9, 5) reach the ceil-mode pool edge
    for output_stride, sizes in ((16, [32, 16, 8, 4, 4]), (8, [32, 16, 8, 8, 8])):
        model = create_model("resnet18", method, num_classes=3, output_stride=output_stride).double().eval()
        model.load_state_dict(reference.state_dict())
        assert [info["reduction"] for info in model.feature_info] == [64 // s for s in sizes]
        with torch.no_grad():
            ours, natural = model.forward_features(x), reference.forward_features(x)
        assert [f.shape[-1] for f in ours] == sizes and [f.shape[1] for f in ours] == [64, 64, 128, 256, 512]
        for level, (a, b) in enumerate(zip(ours, natural)):
            step = a.shape[-1] // b.shape[-1]
            assert torch.allclose(a[..., ::step, ::step], b, rtol=1e-9, atol=1e-9), (output_stride, level)


def test_cifar_model_is_torchvision_resnet18_with_a_3x3_stem_and_bad_output_stride() -> None:
    """The fp CIFAR layout against torchvision's resnet18 with the usual CIFAR stem (3x3/1 conv, no
    max-pool), output for output.  Catches: a strided or 7x7 stem, a max-pool left in, a stage
    stride wrong for 32 px inputs."""
    ours = create_model("resnet18_cifar", "fp", num_classes=10).eval()
    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1, reference.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours(x), reference.eval()(x), atol=1e-5)
    binary = create_model("resnet18_cifar", "irnet", num_classes=10)
    assert [f.shape[-1] for f in binary.forward_features(torch.randn(1, 3, 32, 32))] == [32, 32, 16, 8, 4]
    with pytest.raises(ValueError, match="output_stride 2 not possible"):
        create_model("resnet18", "irnet", output_stride=2)
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        create_model("resnet50", "irnet")


def test_fp_model_is_torchvision_resnet18() -> None:
    ours = create_model("resnet18", "fp", num_classes=7).eval()
    reference = torchvision.models.resnet18(num_classes=7).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("method", BINARY)
def test_taps_give_latent_and_its_sign(method: str) -> None:
    """a_F and a_B of each tapped site, against the tapped conv's own input recorded by a
    separate hook and transformed by hand: catches a tap on the wrong tensor (e.g. RBNN's
    standardized value instead of the centred one, ReActNet's input without its threshold)."""
    model = create_model("resnet18", method, num_classes=4)
    sites = ["layer1.1.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2"]
    inputs = {}
    modules = dict(model.named_modules())
    handles = [modules[site].register_forward_pre_hook(
        lambda module, args, site=site: inputs.__setitem__(site, args[0].detach().clone())) for site in sites]
    with collect_taps(model, "stages") as taps:
        model(torch.randn(2, 3, 64, 64))
    for handle in handles:
        handle.remove()
    assert list(taps) == sites
    assert [tap.latent.shape[-1] for tap in taps.values()] == [16, 8, 4, 2]
    for site, tap in taps.items():
        x = inputs[site]
        kind = get_recipe(method).input_binarizer.name
        if kind == "rsign":
            expected = x + modules[site].input_binarizer.pre.bias.detach()
        elif kind == "standardized_sign":
            expected = x - x.mean(dim=(1, 2, 3), keepdim=True)
        else:
            expected = x
        assert torch.allclose(tap.latent, expected, atol=1e-6)
        assert torch.equal(tap.binary, torch.where(expected >= 0, 1.0, -1.0))


def test_tap_groups_and_gradient_through_taps() -> None:
    model = create_model("resnet18", "reactnet", num_classes=4)
    assert len(select_sites(model, "all")) == 16
    assert len(select_sites(model, "blocks")) == 8
    with pytest.raises(ValueError, match="unknown tap sites"):
        select_sites(model, ["layer9.0.conv1"])
    with pytest.raises(ValueError, match="no binary activations"):
        select_sites(create_model("resnet18", "fp"), "all")
    with collect_taps(model, ["layer2.0.conv1"]) as taps:
        model(torch.randn(2, 3, 32, 32))
    tap = taps["layer2.0.conv1"]
    (tap.latent * tap.binary).sum().backward()
    # RSign's learnable threshold of that site receives the gradient
    assert model.layer2[0].conv1.input_binarizer.pre.bias.grad.abs().sum() > 0
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


def test_set_progress_drives_schedules_and_rbnn_rotations() -> None:
    model = create_model("resnet18", "irnet", num_classes=2)
    model.set_progress(0.5)
    estimator = model.layer1[0].conv1.input_binarizer.sign.estimator
    assert (estimator.t, estimator.k) == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match="progress"):
        model.set_progress(1.5)

    rbnn = create_model("resnet18", "rbnn", num_classes=2)
    x = torch.randn(2, 3, 32, 32)
    rbnn.train()(x)
    r1 = rbnn.layer2[0].conv1.weight_binarizer.r1.clone()
    rbnn(x)
    assert torch.equal(rbnn.layer2[0].conv1.weight_binarizer.r1, r1)
    rbnn.eval()
    rbnn.set_progress(0.1)
    rbnn(x)
    assert torch.equal(rbnn.layer2[0].conv1.weight_binarizer.r1, r1)  # no refit in eval mode
    rbnn.train()(x)
    assert not torch.equal(rbnn.layer2[0].conv1.weight_binarizer.r1, r1)


def test_rbnn_init_sets_bn_gamma_tiny_and_bireal_starts_positive() -> None:
    rbnn = create_model("resnet18", "rbnn")
    assert all(m.weight.max().item() == pytest.approx(1e-8) for m in rbnn.modules() if isinstance(m, nn.BatchNorm2d))
    bireal = create_model("resnet18", "bireal")
    weights = bireal.layer1[0].conv1.weight
    assert weights.min() >= 0 and weights.max() <= 1e-3


def test_relu_before_sign_is_rejected() -> None:
    base = get_recipe("irnet")
    fields = {f: getattr(base, f) for f in Recipe.__dataclass_fields__}
    with pytest.raises(ValueError, match="ReLU before a sign"):
        Recipe(**{**fields, "block_act": "relu"})


def test_method_name_grammar_is_one() -> None:
    assert split_method(" RBNN+CMIM ") == ("rbnn", ["cmim"])
    assert split_method("fp") == ("fp", [])
    assert base_method("IRNet+cmim") == "irnet" and has_cmim("IRNet+CMIM") and not has_cmim("irnet")
    assert not has_cmim("irnet+cmimx")  # a suffix is a whole word; get_recipe refuses this name
    assert get_recipe(" RBNN+CMIM ").name == "rbnn+cmim"
    with pytest.raises(ValueError, match="unknown method suffix"):
        get_recipe("irnet+cmimx")
