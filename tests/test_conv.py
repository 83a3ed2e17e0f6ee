"""The binary convolution against plain convolutions of hand-built +-1 tensors."""

import pytest
import torch
import torch.nn.functional as F

from cmim_dense.binary import BinaryConv2d, Spec, binary_sign
from cmim_dense.models import create_model

SIGN = Spec("sign", estimator=Spec("ste_clip"))
WSIGN = Spec("sign", estimator=Spec("ste"))


@pytest.mark.parametrize(("stride", "dilation", "groups"), [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)])
def test_matches_conv_of_signs(stride: int, dilation: int, groups: int) -> None:
    conv = BinaryConv2d(4, 6, 3, stride, dilation, dilation, groups, input_binarizer=SIGN, weight_binarizer=WSIGN)
    x = torch.randn(2, 4, 9, 9)
    expected = F.conv2d(binary_sign(x), binary_sign(conv.weight), None, stride, dilation, dilation, groups)
    assert torch.equal(conv(x), expected)


def test_zero_padding_makes_border_taps_ternary() -> None:
    conv = BinaryConv2d(2, 1, 3, padding=1, input_binarizer=SIGN, weight_binarizer=WSIGN)
    with torch.no_grad():
        conv.weight.fill_(0.3)
    out = conv(torch.ones(1, 2, 4, 4))
    assert out[0, 0, 1, 1].item() == 18  # 9 taps x 2 channels
    assert out[0, 0, 0, 0].item() == 8  # corner: 4 valid taps x 2 channels


@pytest.mark.parametrize(("pad_value", "corner"), [(1.0, 18.0), (-1.0, -2.0)])
def test_binary_padding(pad_value: float, corner: float) -> None:
    conv = BinaryConv2d(2, 1, 3, padding=1, input_binarizer=SIGN, weight_binarizer=WSIGN, pad_value=pad_value)
    with torch.no_grad():
        conv.weight.fill_(0.3)
    out = conv(torch.ones(1, 2, 4, 4))
    assert out[0, 0, 0, 0].item() == corner  # 4 ones and 5 pad values per channel
    x = torch.randn(1, 2, 5, 5)
    padded = F.pad(binary_sign(x), (1, 1, 1, 1), value=pad_value)
    assert torch.equal(conv(x), F.conv2d(padded, binary_sign(conv.weight)))


def test_bad_pad_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="pad_value"):
        BinaryConv2d(1, 1, 3, padding=1, input_binarizer=SIGN, pad_value=0.5)


def test_xnor_k_map() -> None:
    conv = BinaryConv2d(2, 1, 3, padding=1, input_binarizer=SIGN, weight_binarizer=WSIGN, input_scale=True)
    with torch.no_grad():
        conv.weight.fill_(0.3)
    x = torch.full((1, 2, 4, 4), -2.0)
    out = conv(x)
    # interior: sum = -18, K = 2; corner: sum = -8, K = 2 * 4 / 9 (box average with zero padding)
    assert out[0, 0, 1, 1].item() == pytest.approx(-36.0)
    assert out[0, 0, 0, 0].item() == pytest.approx(-8 * 8 / 9)


def test_real_valued_parts_pass_through() -> None:
    conv = BinaryConv2d(3, 4, 3, padding=1, input_binarizer=SIGN)  # binary inputs, real weights
    x = torch.randn(1, 3, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(binary_sign(x), conv.weight, padding=1))
    assert conv.binary_inputs and not conv.binary_weights


def test_gradients_reach_latent_weights_and_inputs() -> None:
    conv = BinaryConv2d(3, 4, 3, padding=1, input_binarizer=SIGN, weight_binarizer=WSIGN)
    x = (torch.rand(2, 3, 5, 5) - 0.5).requires_grad_()
    conv(x).square().sum().backward()
    assert conv.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_binary_conv_sums_stay_exact_under_half_precision_autocast() -> None:
    """bfloat16 holds odd integers exactly only up to 255: a 3x3x63 sum of +1s (567) must run in float32."""
    conv = BinaryConv2d(63, 2, 3, padding=1, bias=False, input_binarizer=SIGN, weight_binarizer=WSIGN)
    with torch.no_grad():
        conv.weight.fill_(0.5)
    x = torch.rand(1, 63, 4, 4) + 0.1
    exact = conv(x)
    assert exact[0, 0, 1, 1].item() == 567.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = conv(x)
    assert torch.equal(mixed.float(), exact)


def test_weight_cache_follows_in_place_updates_and_gradients() -> None:
    conv = BinaryConv2d(4, 4, 3, padding=1, bias=False, input_binarizer=SIGN, weight_binarizer=WSIGN)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        first = conv(x)
        conv.weight.neg_()  # in-place change: the cached binary weight must not be reused
        flipped = conv(x)
    assert torch.equal(flipped, -first)
    conv.weight.requires_grad_(True)
    conv(x).sum().backward()  # with gradients needed, the weight is binarized afresh (and differentiable)
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["irnet", "rbnn", "reactnet"])
def test_weight_cache_follows_dtype_and_storage_changes(method: str) -> None:
    """``.double()`` and ``.to(device)`` keep each parameter's identity and version but swap its
    data: a float32 evaluation forward followed by a float64 one must binarize afresh."""
    model = create_model("resnet18_cifar", method, num_classes=5).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        single = model(x)
        model.double()
        double = model(x.double())
        model.float()
        again = model(x)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, single)
    conv = model.layer1[0].conv1
    with torch.no_grad():
        conv(torch.randn(1, 64, 4, 4))
        conv.weight.data = -conv.weight.data  # a swapped .data keeps the version counter as well
        assert torch.equal(conv.forward_weight(), conv.effective_weight())


def test_a_derived_value_is_built_once_and_again_only_when_a_source_changes() -> None:
    """The cache behind the frozen weight, the packed operands and a frozen backbone's packed copy: it must
    hit (a cache that never hits computes the same values, so only this shows it: the first version
    rebuilt on every call and made frozen fine-tuning slower than before it) and miss on each kind of
    change (in place, replaced, moved to another dtype)."""
    from cmim_dense.binary.derived import Derived

    weight, builds = torch.ones(3), []
    derived: Derived[torch.Tensor] = Derived()

    def build() -> torch.Tensor:
        builds.append(1)
        return weight.sum()

    first = derived.get([weight], build)
    assert derived.get([weight], build) is first and len(builds) == 1
    weight.add_(1.0)
    assert derived.get([weight], build).item() == 6.0 and len(builds) == 2
    weight = weight.clone()
    derived.get([weight], build)
    weight.data = weight.data.double()
    derived.get([weight], build)
    assert len(builds) == 4
    conv = BinaryConv2d(4, 4, 3, input_binarizer=SIGN, weight_binarizer=WSIGN).requires_grad_(False)
    assert conv.forward_weight() is conv.forward_weight()
