"""Statistics over seeds: the mean with its Student-t confidence interval, and paired differences.

Every reported metric of a seeded experiment is ``mean ± half-width``, the half-width of the
two-sided confidence interval of the mean over n seeds: ``t_{(1 + level) / 2, n - 1} * s / sqrt(n)``
with ``s`` the sample standard deviation (ddof = 1).  One seed has no interval (NaN half-width).
A paired difference (a method's ``+cmim`` twin minus the method, seed by seed) gets the same
interval over the per-seed differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and the half-width of its ``level`` confidence interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int
    std: float  # sample standard deviation (ddof=1); NaN when n < 2
    level: float = LEVEL

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.half_width)

    def format(self, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
        """``"12.34 ± 0.56"`` (values times ``scale``; ``signed``: ``"+12.34 ± 0.56"``), or just
        ``"12.34"`` without an interval."""
        text = f"{scale * self.mean:{'+' if signed else ''}.{digits}f}"
        return f"{text} ± {abs(scale) * self.half_width:.{digits}f}" if self.has_interval else text


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided Student-t critical value for ``n`` values: ``t_{(1 + level) / 2, n - 1}``."""
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the confidence level must lie in (0, 1), got {level}")
    return float(stats.t.ppf(0.5 + level / 2.0, n - 1))


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of ``values`` and its Student-t confidence interval (one value: NaN half-width and std)."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("the mean of no values is undefined")
    if not np.isfinite(array).all():
        raise ValueError(f"values must be finite numbers, got {array.tolist()}")
    n = int(array.size)
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, n, math.nan, level)
    std = float(array.std(ddof=1))
    return Interval(mean, t_quantile(n, level) * std / math.sqrt(n), n, std, level)


@dataclass(frozen=True)
class PairedDifference:
    """``twin - base`` over the seeds both have: the per-seed differences and their interval."""

    seeds: tuple[int | None, ...]
    differences: tuple[float, ...]
    interval: Interval
    unpaired: tuple[int | None, ...]  # seeds only one side has, left out


def paired_difference(base: Mapping[int | None, float], twin: Mapping[int | None, float],
                      level: float = LEVEL) -> PairedDifference:
    """``twin[seed] - base[seed]`` for every seed in both (seed -> value maps) and their interval.

    Raises ValueError when the two share no seed.
    """
    common = [seed for seed in sorted_seeds(base) if seed in twin]
    if not common:
        raise ValueError(f"no seed in common (base: {seed_names(base)}; twin: {seed_names(twin)})")
    differences = tuple(float(twin[seed]) - float(base[seed]) for seed in common)
    unpaired = tuple(seed for seed in sorted_seeds({**base, **twin}) if seed not in common)
    return PairedDifference(tuple(common), differences, mean_interval(differences, level), unpaired)


def sorted_seeds(seeds: Iterable[int | None]) -> list[int | None]:
    """Seeds in ascending order, an unknown seed (None) first."""
    return sorted(seeds, key=lambda seed: (seed is not None, -1 if seed is None else seed))


def seed_names(seeds: Iterable[int | None]) -> str:
    """``"0, 1, 2"`` (an unknown seed is ``?``; no seeds: ``none``)."""
    return ", ".join("?" if seed is None else str(seed) for seed in sorted_seeds(seeds)) or "none"
