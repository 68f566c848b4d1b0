"""Statistics on hand-computed numbers: t interval, relative change, paired t-test, sign-flip permutation p,
Holm, minimum detectable effect."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from alphastomics.stats import (
    holm,
    min_detectable_effect,
    paired,
    power,
    relative_change,
    sign_flip_p,
    summarize,
)


def test_summary_t_interval_hand_computed() -> None:
    # values 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.302652729749464 -> half width 4.3027 / sqrt(3)
    s = summarize([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.low == pytest.approx(2 - half) and s.high == pytest.approx(2 + half)


def test_summary_small_and_nan() -> None:
    one = summarize([5.0, float("nan")])
    assert one.mean == 5.0 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)
    assert summarize([4.0, 4.0, 4.0]).low == 4.0  # no spread, zero width


def test_relative_change() -> None:
    assert relative_change(0.9, 1.0) == pytest.approx(-0.1)
    assert relative_change(-0.5, -1.0) == pytest.approx(0.5)  # sign relative to |baseline|
    assert math.isnan(relative_change(1.0, 0.0))
    assert math.isnan(relative_change(float("nan"), 1.0))


def test_paired_hand_computed() -> None:
    # differences 0.5, 0.4, 0.6: mean 0.5, s 0.1 -> t = 0.5 / (0.1 / sqrt 3) = 8.660, df 2
    out = paired([1.5, 2.4, 3.6], [1.0, 2.0, 3.0])
    t = 0.5 / (0.1 / math.sqrt(3))
    assert (
        out.n == 3 and out.mean_difference == pytest.approx(0.5) and out.sd_difference == pytest.approx(0.1)
    )
    assert out.t_statistic == pytest.approx(t)
    assert out.p_value == pytest.approx(
        1 - t / math.sqrt(t**2 + 2)
    )  # two-sided p of t with df 2, closed form
    half = 4.302652729749464 * 0.1 / math.sqrt(3)
    assert (out.ci_low, out.ci_high) == pytest.approx((0.5 - half, 0.5 + half))
    # all three differences positive: 2 of the 2^3 sign patterns are as extreme
    assert out.permutation_p == pytest.approx(2 / 8) and out.permutation_exact


def test_sign_flip_p_by_hand() -> None:
    # d = 1, -2, 3, 4, 5 (sum 11): flipping a subset with sum S gives |15 - 2 S| >= 11 iff S <= 2 or S >= 13:
    # {}, {1}, {2} and their complements, 6 of 32 patterns
    assert sign_flip_p([1.0, -2.0, 3.0, 4.0, 5.0]) == (pytest.approx(6 / 32), True)
    assert sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5])[0] == pytest.approx(2 / 32)  # never below 1/16 with n = 5
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 9)
    brute = np.mean(
        [abs(np.mean(np.array(s) * d)) >= abs(d.mean()) - 1e-12 for s in itertools.product((-1, 1), repeat=9)]
    )
    assert sign_flip_p(d) == (pytest.approx(brute), True)
    assert math.isnan(sign_flip_p([1.0])[0])


def test_paired_drops_non_finite_pairs_and_small_n() -> None:
    out = paired([1.0, float("nan"), 3.0, 5.0], [0.0, 0.0, 1.0, 2.0])
    assert out.n == 3 and out.mean_difference == pytest.approx(2.0)
    one = paired([2.0], [1.0])
    assert one.n == 1 and math.isnan(one.p_value) and math.isnan(one.permutation_p) and math.isnan(one.ci_low)
    flat = paired([1.5, 2.5], [1.0, 2.0])  # the same shift on every seed: t undefined, no p
    assert flat.sd_difference == 0 and math.isnan(flat.p_value)
    with pytest.raises(ValueError, match="2 variant values but 1"):
        paired([1.0, 2.0], [1.0])


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04, NaN(=1) with m = 4: 4 x 0.01, 3 x 0.03, max(0.09, 2 x 0.04), 1
    assert holm([0.01, 0.04, 0.03, float("nan")]) == pytest.approx([0.04, 0.09, 0.09, 1.0])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])


def test_min_detectable_effect_has_the_target_power() -> None:
    for n, sd, alpha in ((3, 0.01, 0.05), (5, 2.0, 0.05 / 8), (10, 1.0, 0.05)):
        mde = min_detectable_effect(sd, n, alpha=alpha)
        assert power(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-9)
        assert power(0.95 * mde, sd, n, alpha) < 0.8 < power(1.05 * mde, sd, n, alpha)
    # large n: close to the normal approximation (z_0.975 + z_0.8) sd / sqrt(n) = 2.80 / 10, a bit above
    assert 0.2802 < min_detectable_effect(1.0, 100) < 0.29
    assert min_detectable_effect(2.0, 5) == pytest.approx(2 * min_detectable_effect(1.0, 5))
    assert math.isnan(min_detectable_effect(1.0, 1)) and math.isnan(min_detectable_effect(0.0, 5))
