"""1-bit primitives: sign estimators, input and weight binarizers, the binary convolution."""

from . import rotation  # noqa: F401  (registers the "rotation" weight binarizer)
from .activation import (INPUT_BINARIZERS, InputBinarizer, LearnableBias, PerSampleCenter, PerSampleStandardize,
                         RPReLU)
from .conv import BinaryConv2d
from .estimators import ESTIMATORS, Sign, SignEstimator, binary_sign, build_estimator
from .progress import LogLinearSchedule, ProgressAware, set_progress
from ..spec import Spec
from .weight import WEIGHT_BINARIZERS

__all__ = [
    "BinaryConv2d",
    "ESTIMATORS",
    "INPUT_BINARIZERS",
    "InputBinarizer",
    "LearnableBias",
    "LogLinearSchedule",
    "PerSampleCenter",
    "PerSampleStandardize",
    "ProgressAware",
    "RPReLU",
    "Sign",
    "SignEstimator",
    "Spec",
    "WEIGHT_BINARIZERS",
    "binary_sign",
    "build_estimator",
    "set_progress",
]
