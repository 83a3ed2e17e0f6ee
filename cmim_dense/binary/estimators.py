"""Sign binarizers with surrogate gradients (the backward estimators of each method).

Every estimator computes the same forward, ``sign(x)`` with the convention
``sign(0) = +1`` (so the output is always exactly +-1, which the 1-bit export relies on;
note that ``torch.sign(0) == 0``).  They differ only in the derivative used in place of
d sign(x) / dx during back-propagation:

================  =========================================  ===========================
name              d/dx used in backward                      source
================  =========================================  ===========================
``ste``           1                                          BNN weights (Hubara 2016)
``ste_clip``      1[abs(x) <= 1]                             BNN / XNOR-Net activations
``approx_sign``   max(0, 2 - 2 abs(x))                       Bi-Real Net Eq. 4
``ede``           k t (1 - tanh^2(t x))                      IR-Net Eq. 8-9 (EDE)
``dte``           k t (1 - tanh^2(t x / s))                  DIR-Net DTE (reconstruction)
``rbnn``          max(0, k (sqrt(2) t - t^2 abs(x)))         RBNN Eq. 11-12
================  =========================================  ===========================
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry
from .progress import LogLinearSchedule, ProgressAware
from ..spec import Spec
from .standardize import EPSILON, unbiased_std

ESTIMATORS: Registry[type["SignEstimator"]] = Registry("estimator")


def binary_sign(x: Tensor) -> Tensor:
    """sign(x) with sign(+-0) = +1, in the dtype of ``x``: every value is exactly +1 or -1.

    Computed as sign(sign(x) + 1/2), which maps +-0 to +1: three vectorised passes over one
    output buffer, no temporary (``torch.where`` over a boolean mask is several times slower
    on CPU; ``python bench/binarizer_ops.py``).
    """
    return torch.sign(x).add_(0.5).sign_()


class _SurrogateSign(torch.autograd.Function):
    """Forward: :func:`binary_sign`.  Backward: ``grad * estimator.derivative(x)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, estimator: "SignEstimator") -> Tensor:
        ctx.save_for_backward(x)
        ctx.estimator = estimator
        return binary_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.estimator.backward(x, grad), None


class SignEstimator(ABC):
    """A sign function whose backward pass uses the derivative of a surrogate."""

    def __call__(self, x: Tensor) -> Tensor:
        return _SurrogateSign.apply(x, self)

    @abstractmethod
    def derivative(self, x: Tensor) -> Tensor:
        """The surrogate derivative used in place of d sign(x) / dx, elementwise, as a new tensor."""

    def backward(self, x: Tensor, grad: Tensor) -> Tensor:
        return self.derivative(x).mul_(grad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@ESTIMATORS.register("ste")
class IdentitySTE(SignEstimator):
    """Straight-through estimator: the gradient passes unchanged (BNN's weight rule)."""

    def derivative(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def backward(self, x: Tensor, grad: Tensor) -> Tensor:
        return grad


@ESTIMATORS.register("ste_clip")
class ClippedSTE(SignEstimator):
    """Clipped straight-through estimator 1[abs(x) <= clip] (BNN, Hubara et al. 2016, Eq. 4)."""

    def __init__(self, clip: float = 1.0) -> None:
        self.clip = clip

    def derivative(self, x: Tensor) -> Tensor:
        return x.abs().le_(self.clip)  # a float 0/1 mask: boolean masking is several times slower


@ESTIMATORS.register("approx_sign")
class ApproxSign(SignEstimator):
    """Bi-Real Net's ApproxSign (Liu et al. 2018, Eq. 4).

    Derivative of the piecewise quadratic F(x) = 2x + x^2 on [-1, 0), 2x - x^2 on [0, 1),
    +-1 outside: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere, i.e. max(0, 2 - 2|x|).
    """

    def derivative(self, x: Tensor) -> Tensor:
        return x.abs().mul_(-2.0).add_(2.0).clamp_(min=0.0)


class _ScheduledEstimator(ProgressAware, SignEstimator):
    """An estimator whose (t, k) follow a :class:`LogLinearSchedule` of training progress."""

    def __init__(self, t_min: float, t_max: float) -> None:
        self.schedule = LogLinearSchedule(t_min, t_max)
        self.set_progress(0.0)

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        self.t, self.k = self.schedule(progress)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t={self.t:.4g}, k={self.k:.4g})"


@ESTIMATORS.register("ede")
class ErrorDecayEstimator(_ScheduledEstimator):
    """IR-Net's Error Decay Estimator (Qin et al. 2020, Eq. 8-9).

    Backward uses the derivative of g(x) = k tanh(t x): k t (1 - tanh^2(t x)), with
    t = T_min 10^(e/E log10(T_max/T_min)) and k = max(1/t, 1).  IR-Net: T_min = 0.1, T_max = 10.
    It is evaluated as 4 k t s (1 - s), s = sigmoid(2 t x) (the same function, since
    1 - tanh^2(u) = 4 sigmoid(2u) (1 - sigmoid(2u))), with PyTorch's fused sigmoid backward:
    three passes instead of six, and no ``tanh``, the slowest of them.
    """

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0) -> None:
        super().__init__(t_min, t_max)

    def derivative(self, x: Tensor) -> Tensor:
        return self.backward(x, torch.ones_like(x))

    def backward(self, x: Tensor, grad: Tensor) -> Tensor:
        return torch.ops.aten.sigmoid_backward(grad * (4.0 * self.k * self.t), torch.sigmoid(x * (2.0 * self.t)))


@ESTIMATORS.register("dte")
class DistributionSensitiveEstimator(ErrorDecayEstimator):
    """DIR-Net's Distribution-sensitive Two-stage Estimator: a documented reconstruction.

    The DIR-Net paper (Qin et al., IJCV 2023) gives no public code and its DTE equation could
    not be checked (see docs/methods.md).  We implement the EDE form with the same two-stage
    log-linear t/k schedule and, when ``scale="std"``, make the approximation window follow
    the spread of the tensor being binarized: k t (1 - tanh^2(t x / s)), s = std(x) over the
    whole tensor (detached).  ``scale="none"`` gives EDE exactly.
    """

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0, scale: str = "std") -> None:
        if scale not in ("std", "none"):
            raise ValueError(f"DTE scale must be 'std' or 'none', got {scale!r}")
        super().__init__(t_min, t_max)
        self.scale = scale

    def backward(self, x: Tensor, grad: Tensor) -> Tensor:
        if self.scale == "std":
            spread = unbiased_std(x.detach() - x.detach().mean()).clamp_min(EPSILON)
            return super().backward(x / spread, grad)
        return super().backward(x, grad)


@ESTIMATORS.register("rbnn")
class TrainingAwareEstimator(_ScheduledEstimator):
    """RBNN's training-aware approximation of sign (Lin et al. 2020, Eq. 11-12).

    Surrogate F(x) = k (sqrt(2) t x - sign(x) t^2 x^2 / 2) for |x| < sqrt(2)/t, k sign(x)
    otherwise; its derivative max(0, k (sqrt(2) t - t^2 |x|)) is used in backward.  For
    activations (``activation=True``) RBNN's code fixes k = 1 and uses max(t, 1) for t.
    """

    def __init__(self, t_min: float = 1e-2, t_max: float = 10.0, activation: bool = False) -> None:
        self.activation = activation
        super().__init__(t_min, t_max)

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        if self.activation:
            self.t, self.k = max(self.t, 1.0), 1.0

    def derivative(self, x: Tensor) -> Tensor:
        t, k = self.t, self.k
        return x.abs().mul_(-k * t * t).add_(k * math.sqrt(2.0) * t).clamp_(min=0.0)


def build_estimator(spec: Spec) -> SignEstimator:
    """Instantiate the estimator a :class:`Spec` names."""
    return ESTIMATORS.get(spec.name)(**spec.kwargs)


class Sign(ProgressAware, torch.nn.Module):
    """Module form of a :class:`SignEstimator`; forwards training progress to it.

    Inside an input binarizer this module is the tap point: its input is the latent
    activation a_F and its output the binary activation a_B = sign(a_F).
    """

    def __init__(self, estimator: SignEstimator) -> None:
        super().__init__()
        self.estimator = estimator

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        if isinstance(self.estimator, ProgressAware):
            self.estimator.set_progress(progress)

    def forward(self, x: Tensor) -> Tensor:
        return self.estimator(x)

    def extra_repr(self) -> str:
        return repr(self.estimator)

    @classmethod
    def from_spec(cls, spec: Spec) -> "Sign":
        return cls(build_estimator(spec))
