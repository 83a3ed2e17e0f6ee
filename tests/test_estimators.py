"""Forward values and surrogate gradients of every sign estimator at hand-computed points."""

import math

import pytest
import torch

from cmim_dense.binary import ESTIMATORS, LogLinearSchedule, Sign, Spec, binary_sign, build_estimator


def grad_at(spec: Spec, points: list[float], progress: float | None = None) -> list[float]:
    sign = Sign.from_spec(spec)
    if progress is not None:
        sign.set_progress(progress)
    x = torch.tensor(points, requires_grad=True)
    sign(x).sum().backward()
    return x.grad.tolist()


def test_sign_of_zero_is_plus_one_and_output_is_binary() -> None:
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0])
    assert binary_sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]
    for name in ESTIMATORS.names():
        out = build_estimator(Spec(name))(torch.randn(1000))
        assert set(out.unique().tolist()) == {-1.0, 1.0}, name


def test_sign_keeps_dtype() -> None:
    assert binary_sign(torch.randn(4, dtype=torch.float16)).dtype == torch.float16


def test_identity_ste() -> None:
    assert grad_at(Spec("ste"), [-5.0, 0.0, 0.3]) == [1.0, 1.0, 1.0]


def test_clipped_ste_is_one_inside_unit_interval() -> None:
    assert grad_at(Spec("ste_clip"), [-1.5, -1.0, -0.3, 0.0, 1.0, 1.2]) == [0, 1, 1, 1, 1, 0]


def test_approx_sign_gradient_is_two_minus_two_abs_x() -> None:
    grads = grad_at(Spec("approx_sign"), [-1.5, -0.5, 0.0, 0.25, 0.9, 1.0])
    assert grads == pytest.approx([0.0, 1.0, 2.0, 1.5, 0.2, 0.0])


def test_log_linear_schedule() -> None:
    schedule = LogLinearSchedule(0.1, 10.0)
    assert schedule(0.0) == pytest.approx((0.1, 10.0))
    assert schedule(0.25) == pytest.approx((10**-0.5, 10**0.5))
    assert schedule(0.5) == pytest.approx((1.0, 1.0))
    assert schedule(1.0) == pytest.approx((10.0, 1.0))


def test_ede_gradient_follows_schedule() -> None:
    spec = Spec("ede", t_min=0.1, t_max=10.0)
    # progress 0: t = 0.1, k = 10 -> k t (1 - tanh^2(t x))
    assert grad_at(spec, [0.0, 2.0], 0.0) == pytest.approx([1.0, 1 - math.tanh(0.2) ** 2])
    # progress 1: t = 10, k = 1
    # 10 (1 - tanh^2(1)) = 4.1997434 by hand; t and k swapped would give 10 (1 - tanh^2(0.1)) = 9.90
    assert grad_at(spec, [0.0, 0.1], 1.0) == pytest.approx([10.0, 4.1997434], rel=1e-6)
    # far outside the window the derivative vanishes without overflow
    assert grad_at(spec, [-1e4, 1e4], 1.0) == [0.0, 0.0]


def test_dte_scales_the_window_by_the_spread() -> None:
    x = torch.tensor([-3.0, -1.0, 0.5, 2.0, 4.0])
    spread = x.std().item()
    expected = [1 - math.tanh(v / spread) ** 2 for v in x.tolist()]
    assert grad_at(Spec("dte", scale="std"), x.tolist(), 0.5) == pytest.approx(expected, abs=1e-6)
    plain = [1 - math.tanh(v) ** 2 for v in x.tolist()]
    assert grad_at(Spec("dte", scale="none"), x.tolist(), 0.5) == pytest.approx(plain, abs=1e-6)
    with pytest.raises(ValueError, match="scale"):
        build_estimator(Spec("dte", scale="channel"))


def test_rbnn_weight_estimator() -> None:
    spec = Spec("rbnn", t_min=1e-2, t_max=10.0)
    # progress 0: t = 0.01, k = 100: max(0, k (sqrt(2) t - t^2 |x|))
    grads = grad_at(spec, [0.0, 1.0, -200.0], 0.0)
    assert grads == pytest.approx([100 * math.sqrt(2) * 0.01, 100 * (math.sqrt(2) * 0.01 - 1e-4), 0.0])


def test_rbnn_activation_estimator_uses_k1_and_t_at_least_1() -> None:
    spec = Spec("rbnn", t_min=1e-2, t_max=10.0, activation=True)
    assert grad_at(spec, [0.0, 1.0, 1.5], 0.0) == pytest.approx([math.sqrt(2), math.sqrt(2) - 1, 0.0])
    # progress 1: t = 10 -> triangle of height 10 sqrt(2) and half-width sqrt(2)/10
    assert grad_at(spec, [0.0, 0.1], 1.0) == pytest.approx([10 * math.sqrt(2), 10 * math.sqrt(2) - 10.0])


def test_unknown_estimator_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown estimator 'tanh'.*approx_sign"):
        build_estimator(Spec("tanh"))
