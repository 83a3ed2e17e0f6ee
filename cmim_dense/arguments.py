"""argparse value types shared by the command lines (sizes and ranges in one spelling)."""

from __future__ import annotations

import argparse


def image_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"480x640"`` -> (480, 640) (height x width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a size is N or HEIGHTxWIDTH, e.g. 480x640, got {text!r}")
    return parts[0], parts[1]


def scale_range(text: str) -> tuple[float, float]:
    """``"0.5,2"`` -> (0.5, 2.0), a range of random scale factors with 0 < MIN <= MAX."""
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a scale range is MIN,MAX, e.g. 0.5,2, got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"a scale range needs 0 < MIN <= MAX, got {text!r}")
    return low, high


def weights(text: str) -> tuple[float, ...]:
    """``"1,0.1,10"`` -> (1.0, 0.1, 10.0), positive numbers."""
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights are comma-separated numbers, e.g. 1,0.1,10, got {text!r}") from None
    if not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"weights must be positive, got {text!r}")
    return values
