"""The statistics over seeds (cmim_dense.stats) against hand-computed values.

Reference quantiles, from closed forms rather than from scipy: for 1 degree of freedom
t_{0.975} = tan(0.475 pi) = 12.706204736174696; for 2, t_{0.975} = 0.95 / sqrt(2 * 0.975 * 0.025)
= 4.302652729749464 (printed tables: 12.706 and 4.303).
"""

import math

import pytest

from cmim_dense.stats import mean_interval, paired_difference, seed_names, sorted_seeds, t_quantile

T_975_DF1 = 12.706204736174696
T_975_DF2 = 4.302652729749464


def test_interval_of_one_two_three() -> None:
    """[1, 2, 3]: mean 2, s 1, half-width 4.302652729749464 / sqrt(3) = 2.484137711750331.

    Catches: ddof=0 (s = 0.816, half-width 2.028), the normal 1.96 instead of Student t (1.132),
    n degrees of freedom instead of n - 1 (t = 3.182, 1.837), the one-sided 0.95 quantile (2.920,
    1.686), dividing by n instead of sqrt(n) (1.434)."""
    interval = mean_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.std == pytest.approx(1.0, rel=1e-12)
    assert t_quantile(3) == pytest.approx(T_975_DF2, rel=1e-9)
    assert interval.half_width == pytest.approx(2.484137711750331, rel=1e-9)
    assert (interval.low, interval.high) == pytest.approx((-0.484137711750331, 4.484137711750331), rel=1e-9)
    assert interval.format() == "2.00 ± 2.48"


def test_interval_of_two_values_and_scaled_formats() -> None:
    """[1, 3]: mean 2, s sqrt(2), half-width 12.706204736174696 * sqrt(2) / sqrt(2) = 12.7062.

    Catches: a fixed critical value for every n (1 degree of freedom needs 12.706, not 4.303), and a
    format that forgets the scale (percent), the sign or the '±'."""
    interval = mean_interval([0.01, 0.03])
    assert interval.half_width == pytest.approx(T_975_DF1 * 0.01, rel=1e-9)
    assert interval.format(100.0, 2) == "2.00 ± 12.71"
    assert interval.format(100.0, 1, signed=True) == "+2.0 ± 12.7"
    assert mean_interval([-0.5, -0.5]).format(signed=True) == "-0.50 ± 0.00"  # s = 0: a zero-width interval


def test_one_value_has_no_interval_and_bad_input_is_refused() -> None:
    """One seed: the mean, a NaN half-width and a plain '12.34' (no '± nan').

    Catches: an interval invented from one value (t of 0 degrees of freedom is undefined) and
    silently averaging NaN or nothing."""
    interval = mean_interval([0.1234])
    assert interval.mean == 0.1234 and interval.n == 1 and not interval.has_interval
    assert math.isnan(interval.half_width) and math.isnan(interval.std)
    assert interval.format(100.0) == "12.34"
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least 2"):
        t_quantile(1)


def test_paired_difference_pairs_by_seed() -> None:
    """twin - base over the shared seeds 0, 1, 2: differences [1, 2, 3] -> 2 ± 2.484137711750331;
    seeds 3 (base only) and 5 (twin only) are left out and named.

    Catches: base - twin (mean -2), pairing by position instead of by seed (the twin's mapping is
    given in another order), the difference of the two means over all their seeds (3.0 - 3.75 =
    -0.75), keeping seeds that only one side has."""
    base = {0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0}
    twin = {2: 6.0, 5: 0.0, 0: 2.0, 1: 4.0}
    paired = paired_difference(base, twin)
    assert paired.seeds == (0, 1, 2)
    assert paired.differences == (1.0, 2.0, 3.0)
    assert paired.unpaired == (3, 5)
    assert paired.interval.mean == 2.0
    assert paired.interval.half_width == pytest.approx(2.484137711750331, rel=1e-9)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_seed_order_and_names() -> None:
    """Catches: string order (10 before 2) and an unknown seed that breaks the sort."""
    assert sorted_seeds([10, 2, None, 0]) == [None, 0, 2, 10]
    assert seed_names({10: 1.0, 2: 1.0, None: 1.0}) == "?, 2, 10"
    assert seed_names([]) == "none"
