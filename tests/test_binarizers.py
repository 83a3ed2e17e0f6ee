"""Weight and input binarizers: values, scales and gradients at hand-computed points."""

import math

import pytest
import torch

from cmim_dense.binary import InputBinarizer, RPReLU, Spec
from cmim_dense.binary.activation import build_input_binarizer
from cmim_dense.binary.rotation import alignment, random_orthogonal, rotation_shape, update_rotations
from cmim_dense.binary.standardize import standardize_rows, unbiased_std
from cmim_dense.binary.weight import build_weight_binarizer

STE_CLIP = Spec("ste_clip")


def two_filters() -> torch.Tensor:
    # two output filters of shape (1, 1, 2): W_1 = [1, -3], W_2 = [0.5, 0.5]
    return torch.tensor([[[[1.0, -3.0]]], [[[0.5, 0.5]]]], requires_grad=True)


def test_sign_weight_has_no_scale() -> None:
    w = two_filters()
    binarizer = build_weight_binarizer(Spec("sign", estimator=Spec("ste")), w)
    assert binarizer(w).flatten().tolist() == [1.0, -1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("scale_grad", "expected_grad"),
    [
        # alpha_1 = 2, g = [1, 2]: g alpha 1[|W|<=1] = [2, 0]; + sign(W)/n sum(g sign W) = [-0.5, 0.5]
        ("through", [1.5, 0.5]),
        ("detached", [2.0, 0.0]),
        ("none", [1.0, 0.0]),
    ],
)
def test_xnor_scale_and_its_gradient(scale_grad: str, expected_grad: list[float]) -> None:
    w = two_filters()
    binarizer = build_weight_binarizer(Spec("scaled_sign", estimator=STE_CLIP, scale_grad=scale_grad), w)
    out = binarizer(w)
    assert out.flatten().tolist() == [2.0, -2.0, 0.5, 0.5]
    out.backward(torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]]))
    assert w.grad[0].flatten().tolist() == pytest.approx(expected_grad)


def test_unscaled_gradient_form_keeps_small_scales_exact() -> None:
    """ReActNet's weight at the scale of a trained layer (mean |W| ~ 5e-4): the value is exactly
    alpha sign(W) in float32, which b + (b (alpha - 1)).detach() misses by 6e-5 relative."""
    w = (torch.rand(4, 8, 3, 3) - 0.5) * 1e-3
    w[:, 0, 0, 0] = 0.0  # sign(0) = +1
    binarizer = build_weight_binarizer(Spec("scaled_sign", estimator=STE_CLIP, scale_grad="none"), w)
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = torch.where(w >= 0, 1.0, -1.0) * alpha
    assert torch.equal(binarizer(w), expected)


def test_learned_scale_starts_at_mean_abs_and_learns() -> None:
    w = two_filters()
    binarizer = build_weight_binarizer(Spec("learned_scale", estimator=STE_CLIP), w)
    assert binarizer.scale.flatten().tolist() == [2.0, 0.5]
    out = binarizer(w)
    assert out.flatten().tolist() == [2.0, -2.0, 0.5, 0.5]
    out.sum().backward()
    assert binarizer.scale.grad.flatten().tolist() == [0.0, 2.0]  # sum of sign(W) per filter


def test_standardized_filters_are_zero_mean_unit_std() -> None:
    w = torch.randn(8, 4, 3, 3) * 5 + 2
    s = standardize_rows(w).flatten(1)
    assert s.mean(1).abs().max() < 1e-5
    assert (s.std(1) - 1).abs().max() < 1e-5


def test_standardize_rows_backward_matches_autograd_of_the_formula() -> None:
    # the fused backward against autograd through mean, std and division, and a numeric check
    def by_formula(x: torch.Tensor) -> torch.Tensor:
        rows = x.flatten(1)
        centered = rows - rows.mean(1, keepdim=True)
        return (centered / centered.std(1, keepdim=True)).view_as(x)

    x = (torch.randn(6, 3, 3, 3, dtype=torch.float64) * 3 + 1).requires_grad_()
    upstream = torch.randn_like(x)
    fused, = torch.autograd.grad(standardize_rows(x), x, upstream)
    reference, = torch.autograd.grad(by_formula(x), x, upstream)
    assert torch.allclose(standardize_rows(x), by_formula(x))
    assert torch.allclose(fused, reference, atol=1e-12)
    assert torch.autograd.gradcheck(standardize_rows, (x,))


def test_unbiased_std_of_centred_tensor_is_torch_std() -> None:
    x = torch.randn(4, 5, 6)
    centered = x - x.mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(unbiased_std(centered, dim=(1, 2)), x.std(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(unbiased_std(x - x.mean()), x.std(), atol=1e-6)


def test_libra_pb_hand_example() -> None:
    # filter [1, 2, 3, 6]: centered [-2, -1, 0, 3], unbiased std sqrt(14/3),
    # mean |standardized| = 0.694 -> 2^round(log2 0.694) = 2^-1; sign(0) = +1
    w = torch.tensor([[[[1.0, 2.0, 3.0, 6.0]]]], requires_grad=True)
    binarizer = build_weight_binarizer(Spec("libra_pb", estimator=Spec("ede")), w)
    assert binarizer(w).flatten().tolist() == [-0.5, -0.5, 0.5, 0.5]


def test_libra_pb_values_are_power_of_two_and_balanced() -> None:
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    binarizer = build_weight_binarizer(Spec("libra_pb", estimator=Spec("ede")), w)
    out = binarizer(w).detach().flatten(1)
    scales = out.abs()
    assert torch.equal(scales, scales[:, :1].expand_as(scales))  # one magnitude per filter
    exponents = torch.log2(scales[:, 0])
    assert torch.equal(exponents, exponents.round())
    binarizer(w).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_rotation_shape() -> None:
    assert rotation_shape(4608) == (64, 72)
    assert rotation_shape(576) == (24, 24)
    assert rotation_shape(27) == (3, 9)
    assert rotation_shape(13) == (1, 13)


def test_rotation_update_keeps_orthogonality_and_improves_alignment() -> None:
    x = torch.randn(32, 6, 12)
    r1, r2 = random_orthogonal(6), random_orthogonal(12)
    before = alignment(x, r1, r2)
    n1, n2 = update_rotations(x, r1, r2, iterations=3)
    assert torch.allclose(n1.T @ n1, torch.eye(6), atol=1e-5)
    assert torch.allclose(n2.T @ n2, torch.eye(12), atol=1e-5)
    assert alignment(x, n1, n2) > before


def test_rotation_binarizer_forward_and_refit_once_per_progress() -> None:
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    binarizer = build_weight_binarizer(Spec("rotation", estimator=Spec("rbnn")), w)
    r1 = binarizer.r1.clone()
    # theta = pi/2: W_b = alpha sign(R1^T X R2) with the refitted rotations
    out = binarizer(w)
    assert not torch.equal(binarizer.r1, r1)
    x = standardize_rows(w).detach().reshape(4, *binarizer.shape_ab)
    rotated = (binarizer.r1.T @ x @ binarizer.r2).view_as(w)
    expected = torch.where(rotated >= 0, 1.0, -1.0) * binarizer.scale
    assert torch.allclose(out, expected)
    refit_r1 = binarizer.r1.clone()
    binarizer(w)
    assert torch.equal(binarizer.r1, refit_r1)  # same progress: no second refit
    # theta = 0: plain sign of the standardized weight, and W receives gradient
    with torch.no_grad():
        binarizer.theta.zero_()
    out = binarizer(w)
    assert torch.allclose(out, torch.where(standardize_rows(w) >= 0, 1.0, -1.0) * binarizer.scale)
    out.sum().backward()
    assert w.grad.abs().sum() > 0


def test_rotation_binarizer_runs_under_autocast_and_refits_in_float32() -> None:
    """RBNN under mixed precision (--amp): the refit's SVD runs in float32 (CUDA has no half SVD)
    and the half-precision rotated weight meets the float32 standardized one; the result equals
    the float32 computation (rotations refitted from the same weights). Found on a GPU: rbnn
    with --amp failed in the first step."""
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    spec = Spec("rotation", estimator=Spec("rbnn"))
    mixed, plain = build_weight_binarizer(spec, w), build_weight_binarizer(spec, w)
    plain.load_state_dict(mixed.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixed(w)
    reference = plain(w)
    assert mixed.r1.dtype == torch.float32 and torch.allclose(mixed.r1, plain.r1, atol=1e-5)
    assert torch.allclose(out.float(), reference, atol=1e-2)
    out.float().sum().backward()
    assert mixed.theta.grad.abs().sum() > 0


def test_rotation_refit_is_recorded_in_the_state_dict() -> None:
    w = torch.randn(4, 2, 3, 3)
    a = build_weight_binarizer(Spec("rotation", estimator=Spec("rbnn")), w)
    a.set_progress(0.25)
    a(w)
    b = build_weight_binarizer(Spec("rotation", estimator=Spec("rbnn")), w)
    b(w)  # b refits at progress 0 ...
    b.load_state_dict(a.state_dict())
    b.set_progress(0.25)
    b(w)  # ... but after loading a's state at progress 0.25 it must not refit again
    assert torch.equal(b.r1, a.r1) and torch.equal(b.r2, a.r2)


def test_rsign_threshold_is_learnable() -> None:
    binarizer = build_input_binarizer(Spec("rsign", estimator=Spec("approx_sign")), channels=2)
    assert isinstance(binarizer, InputBinarizer)
    with torch.no_grad():
        binarizer.pre.bias.copy_(torch.tensor([0.5, -0.5]).view(1, 2, 1, 1))
    x = torch.full((1, 2, 1, 1), -0.25)
    assert binarizer(x).flatten().tolist() == [1.0, -1.0]  # sign(x + b)
    binarizer(x).sum().backward()
    assert binarizer.pre.bias.grad.flatten().tolist() == pytest.approx([1.5, 0.5])  # 2 - 2|x + b|


def test_rbnn_activation_is_sign_of_per_sample_standardized_input() -> None:
    binarizer = build_input_binarizer(
        Spec("standardized_sign", estimator=Spec("rbnn", activation=True)), channels=1
    )
    x = torch.tensor([[[[1.0, 2.0, 3.0, 10.0]]], [[[-5.0, -4.0, -3.0, -2.5]]]])
    # sample means 4 and -3.625 act as thresholds
    assert binarizer(x).flatten().tolist() == [-1, -1, -1, 1, -1, -1, 1, 1]


def test_rprelu_formula() -> None:
    act = RPReLU(1)
    with torch.no_grad():
        act.shift_in.bias.fill_(-1.0)  # gamma = 1
        act.shift_out.bias.fill_(0.5)  # zeta = 0.5
        act.prelu.weight.fill_(0.25)  # beta = 0.25
    x = torch.tensor([3.0, 0.0]).view(2, 1, 1, 1)
    # x > gamma: x - gamma + zeta = 2.5; else beta (x - gamma) + zeta = 0.25
    assert act(x).flatten().tolist() == pytest.approx([2.5, 0.25])


def test_unknown_binarizer_names_fail_with_valid_list() -> None:
    with pytest.raises(ValueError, match="unknown weight binarizer 'foo'.*libra_pb"):
        build_weight_binarizer(Spec("foo"), torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match="unknown input binarizer 'foo'.*rsign"):
        build_input_binarizer(Spec("foo"), 1)
    with pytest.raises(ValueError, match="scale_grad"):
        build_weight_binarizer(Spec("scaled_sign", estimator=STE_CLIP, scale_grad="x"), torch.zeros(1, 1, 1, 1))


def test_spec_round_trips_through_json_dict() -> None:
    spec = Spec("rotation", estimator=Spec("rbnn", t_min=0.01, t_max=10.0), iterations=3)
    assert Spec.from_dict(spec.to_dict()) == spec
    assert str(Spec("ede", t_min=0.1)) == "ede(t_min=0.1)"
    assert math.isclose(spec.replace(iterations=5).kwargs["iterations"], 5)
