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
from abc import ABC
from typing import Any, Callable, ClassVar

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


Rule = Callable[[Tensor, Tensor, Tensor], Tensor]


def _at_float32(t: Tensor, value: Tensor) -> bool:
    """Whether ``t op value`` must be computed in float32 to use ``value`` as a Python number is.

    An estimator's numbers used to be Python floats; now they are 0-dim float64 tensors (see
    :func:`surrogate_sign`).  On the CPU a 0-dim CPU tensor is used exactly as a Python number,
    so plain operators give the same values.  On a GPU a Python number enters a float16/bfloat16
    kernel in float32 (PyTorch's opmath), while a 0-dim tensor on the device is first rounded to
    the half-precision dtype: there the operation is taken in float32 and rounded once, which
    is what the kernel does with a Python number."""
    return t.dtype in (torch.float16, torch.bfloat16) and value.device.type != "cpu"


def times(t: Tensor, value: Tensor) -> Tensor:
    """``t * value`` for a 0-dim ``value``, with the values of ``t * float(value)``."""
    return (t.float() * value).to(t.dtype) if _at_float32(t, value) else t * value


def times_(t: Tensor, value: Tensor) -> Tensor:
    """:func:`times` in place on ``t``."""
    return t.copy_(t.float() * value) if _at_float32(t, value) else t.mul_(value)


def plus_(t: Tensor, value: Tensor) -> Tensor:
    """``t += value`` in place for a 0-dim ``value``, with the values of ``t += float(value)``."""
    return t.copy_(t.float() + value) if _at_float32(t, value) else t.add_(value)


def surrogate_sign(rule: Rule) -> type[torch.autograd.Function]:
    """The autograd function of one backward rule: forward :func:`binary_sign`, backward
    ``rule(x, grad, values)`` (= grad times the surrogate derivative at x).

    Its arguments are tensors only: the input and the numbers of the rule as one float64
    tensor (a :class:`Sign` module's buffer).  ``torch.compile`` then traces forward and backward
    into the graph with no break, and a new training progress changes the data the compiled
    program reads, not the program: no recompilation when the schedule moves.
    """

    class SurrogateSign(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor, values: Tensor) -> Tensor:
            ctx.save_for_backward(x, values)
            return binary_sign(x)

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
            x, values = ctx.saved_tensors
            return rule(x, grad, values), None

    SurrogateSign.rule = staticmethod(rule)  # type: ignore[attr-defined]
    SurrogateSign.__name__ = SurrogateSign.__qualname__ = f"SurrogateSign[{rule.__name__}]"
    return SurrogateSign


class SignEstimator(ABC):
    """A sign function whose backward pass uses the derivative of a surrogate.

    A subclass sets ``function = surrogate_sign(rule)``, ``rule(x, grad, values)`` a pure
    function of tensors, and returns from :meth:`values` the Python numbers the rule reads
    (constants, or the current point of a training schedule), in the order it reads them.
    """

    function: ClassVar[type[torch.autograd.Function]]

    def values(self) -> tuple[float, ...]:
        """The numbers of the backward rule now: ``rule``'s ``values``, as Python floats."""
        return ()

    def value_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """:meth:`values` as a float64 tensor (a 0-dim element of a CPU tensor multiplies like a Python number)."""
        return torch.tensor(self.values(), dtype=torch.float64, device=device)

    def apply(self, x: Tensor, values: Tensor) -> Tensor:
        """sign(x) with this estimator's backward, the rule reading ``values`` (see :meth:`values`)."""
        return self.function.apply(x, values)

    def __call__(self, x: Tensor) -> Tensor:
        return self.apply(x, self.value_tensor())

    def backward(self, x: Tensor, grad: Tensor) -> Tensor:
        """grad times the surrogate derivative at x (what back-propagation through the sign gives)."""
        return self.function.rule(x, grad, self.value_tensor())  # type: ignore[attr-defined]

    def derivative(self, x: Tensor) -> Tensor:
        """The surrogate derivative used in place of d sign(x) / dx, elementwise, as a new tensor."""
        return self.backward(x, torch.ones_like(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def identity_backward(x: Tensor, grad: Tensor, values: Tensor) -> Tensor:
    """d/dx = 1 (straight-through)."""
    return grad


def clipped_backward(x: Tensor, grad: Tensor, values: Tensor) -> Tensor:
    """d/dx = 1[abs(x) <= clip], ``values = (clip,)`` (BNN, Hubara et al. 2016, Eq. 4)."""
    return x.abs().le_(values[0]).mul_(grad)  # a float 0/1 mask: boolean masking is several times slower


def approx_sign_backward(x: Tensor, grad: Tensor, values: Tensor) -> Tensor:
    """d/dx = max(0, 2 - 2|x|) (Bi-Real Net, Liu et al. 2018, Eq. 4)."""
    return x.abs().mul_(-2.0).add_(2.0).clamp_(min=0.0).mul_(grad)


def ede_backward(x: Tensor, grad: Tensor, values: Tensor) -> Tensor:
    """d/dx = k t (1 - tanh^2(t x)) (IR-Net, Qin et al. 2020, Eq. 8-9), ``values = (4 k t, 2 t)``:
    evaluated as 4 k t s (1 - s), s = sigmoid(2 t x), with PyTorch's fused sigmoid backward."""
    return torch.ops.aten.sigmoid_backward(times(grad, values[0]), torch.sigmoid(times(x, values[1])))


def dte_backward(x: Tensor, grad: Tensor, values: Tensor) -> Tensor:
    """:func:`ede_backward` at x / s, s = std(x) over the whole tensor (detached): DIR-Net's DTE
    as reconstructed (see :class:`DistributionSensitiveEstimator`)."""
    spread = unbiased_std(x.detach() - x.detach().mean()).clamp_min(EPSILON)
    return ede_backward(x / spread, grad, values)


def rbnn_backward(x: Tensor, grad: Tensor, values: Tensor) -> Tensor:
    """d/dx = max(0, k (sqrt(2) t - t^2 |x|)) (RBNN, Lin et al. 2020, Eq. 11-12),
    ``values = (-k t^2, k sqrt(2) t)``."""
    return plus_(times_(x.abs(), values[0]), values[1]).clamp_(min=0.0).mul_(grad)


@ESTIMATORS.register("ste")
class IdentitySTE(SignEstimator):
    """Straight-through estimator: the gradient passes unchanged (BNN's weight rule)."""

    function = surrogate_sign(identity_backward)


@ESTIMATORS.register("ste_clip")
class ClippedSTE(SignEstimator):
    """Clipped straight-through estimator 1[abs(x) <= clip] (BNN, Hubara et al. 2016, Eq. 4)."""

    function = surrogate_sign(clipped_backward)

    def __init__(self, clip: float = 1.0) -> None:
        self.clip = clip

    def values(self) -> tuple[float, ...]:
        return (float(self.clip),)


@ESTIMATORS.register("approx_sign")
class ApproxSign(SignEstimator):
    """Bi-Real Net's ApproxSign (Liu et al. 2018, Eq. 4).

    Derivative of the piecewise quadratic F(x) = 2x + x^2 on [-1, 0), 2x - x^2 on [0, 1),
    +-1 outside: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere, i.e. max(0, 2 - 2|x|).
    """

    function = surrogate_sign(approx_sign_backward)


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
    three passes instead of six, and no ``tanh``, the slowest of them.  The rule reads
    (4 k t, 2 t), computed in double precision from the schedule (:func:`ede_backward`).
    """

    function = surrogate_sign(ede_backward)

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0) -> None:
        super().__init__(t_min, t_max)

    def values(self) -> tuple[float, ...]:
        return (4.0 * self.k * self.t, 2.0 * self.t)


@ESTIMATORS.register("dte")
class DistributionSensitiveEstimator(ErrorDecayEstimator):
    """DIR-Net's Distribution-sensitive Two-stage Estimator: a documented reconstruction.

    The DIR-Net paper (Qin et al., IJCV 2023) gives no public code and its DTE equation could
    not be checked (see docs/methods.md).  We implement the EDE form with the same two-stage
    log-linear t/k schedule and, when ``scale="std"``, make the approximation window follow
    the spread of the tensor being binarized: k t (1 - tanh^2(t x / s)), s = std(x) over the
    whole tensor (detached).  ``scale="none"`` gives EDE exactly.
    """

    function = surrogate_sign(dte_backward)

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0, scale: str = "std") -> None:
        if scale not in ("std", "none"):
            raise ValueError(f"DTE scale must be 'std' or 'none', got {scale!r}")
        super().__init__(t_min, t_max)
        self.scale = scale
        if scale == "none":
            self.function = ErrorDecayEstimator.function


@ESTIMATORS.register("rbnn")
class TrainingAwareEstimator(_ScheduledEstimator):
    """RBNN's training-aware approximation of sign (Lin et al. 2020, Eq. 11-12).

    Surrogate F(x) = k (sqrt(2) t x - sign(x) t^2 x^2 / 2) for |x| < sqrt(2)/t, k sign(x)
    otherwise; its derivative max(0, k (sqrt(2) t - t^2 |x|)) is used in backward, the rule
    reading (-k t^2, k sqrt(2) t) (:func:`rbnn_backward`).  For activations
    (``activation=True``) RBNN's code fixes k = 1 and uses max(t, 1) for t.
    """

    function = surrogate_sign(rbnn_backward)

    def __init__(self, t_min: float = 1e-2, t_max: float = 10.0, activation: bool = False) -> None:
        self.activation = activation
        super().__init__(t_min, t_max)

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        if self.activation:
            self.t, self.k = max(self.t, 1.0), 1.0

    def values(self) -> tuple[float, ...]:
        t, k = self.t, self.k
        return (-k * t * t, k * math.sqrt(2.0) * t)


def build_estimator(spec: Spec) -> SignEstimator:
    """Instantiate the estimator a :class:`Spec` names."""
    return ESTIMATORS.get(spec.name)(**spec.kwargs)


class Sign(ProgressAware, torch.nn.Module):
    """Module form of a :class:`SignEstimator`; forwards training progress to it.

    Inside an input binarizer this module is the tap point: its input is the latent
    activation a_F and its output the binary activation a_B = sign(a_F).

    The numbers the estimator's backward reads (:meth:`SignEstimator.values`) are held in a
    float64 buffer, ``values``, that moves with the module (to the GPU) and that
    :meth:`set_progress` overwrites in place: a compiled model reads the current schedule
    without being recompiled.  The buffer is not persistent (the state dict is unchanged: the
    engine sets the progress at the start of every epoch, resumed or not).
    """

    def __init__(self, estimator: SignEstimator) -> None:
        super().__init__()
        self.estimator = estimator
        self.register_buffer("values", estimator.value_tensor(), persistent=False)

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        if isinstance(self.estimator, ProgressAware):
            self.estimator.set_progress(progress)
            self.values.copy_(self.estimator.value_tensor())

    def forward(self, x: Tensor) -> Tensor:
        return self.estimator.apply(x, self.values)

    def extra_repr(self) -> str:
        return repr(self.estimator)

    @classmethod
    def from_spec(cls, spec: Spec) -> "Sign":
        return cls(build_estimator(spec))
