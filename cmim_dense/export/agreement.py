"""Does a packed (and fused) binary model compute its float self's function?  Counted per image.

Packing sums integers exactly, but folding BatchNorm into the kernel's epilogue changes float rounding
(about 1e-6 relative, docs/export.md).  A real value that lands within that rounding of zero takes
the other sign at the next binary layer, and the flip spreads through everything after it (a global
pooling carries it to every output).  Such a tie is a property of one image: about 1-2 % of random
64x64 images through a randomly initialised dense model meet one (bench/RESULTS.md), and two float
implementations that sum in different orders meet the same.  A packed path that computes another
function differs on every image.  So the comparison is a count of agreeing images, never one
difference over a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Agreement:
    """Per-image max abs differences between two models' outputs, and the tolerance they are held to."""

    differences: tuple[float, ...]
    tolerance: float

    @property
    def agreeing(self) -> int:
        """Images whose every output is within ``tolerance`` of the reference's."""
        return sum(difference < self.tolerance for difference in self.differences)

    def record(self) -> dict[str, object]:
        """The JSON fields a benchmark writes."""
        return {"tolerance": self.tolerance, "max_abs_differences": list(self.differences),
                "agreeing_draws": self.agreeing}


Output = Tensor | dict[str, Tensor]  # a multi-task model's: task name -> output


def per_image_difference(output: Output, reference: Output) -> Tensor:
    """Each image's max abs difference between two outputs of a batch (over every task's output)."""
    if isinstance(output, dict):
        return torch.stack([per_image_difference(output[name], reference[name]) for name in reference]).amax(0)
    return (output - reference).abs().flatten(1).amax(dim=1)


def agreement(model: Callable[[Tensor], Output], reference: Callable[[Tensor], Output], images: Tensor,
              tolerance: float = 1e-4) -> Agreement:
    """Run a batch of ``images`` (N, C, H, W) through both models (eval mode: the images stay
    independent) and compare them image by image."""
    with torch.no_grad():
        difference = per_image_difference(model(images), reference(images))
    return Agreement(tuple(difference.tolist()), tolerance)
