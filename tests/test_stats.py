"""Statistics on hand-computed numbers: t interval, relative change, paired t-test, sign-flip permutation p,
Holm, minimum detectable effect, repeated-measures ANOVA over diffusion time."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from alphastomics.analysis.stats import (
    holm,
    min_detectable_effect,
    paired,
    power,
    random_effects,
    relative_change,
    sign_flip_p,
    summarize,
    time_effect,
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


def test_holm_and_t_interval_equal_their_formulas() -> None:
    """holm (statsmodels' multipletests) and summarize (scipy's t interval) give the hand formulas' numbers:
    Holm's p~_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)) with NaN as 1, ties included; mean -+ t s / sqrt(n)."""
    rng = np.random.default_rng(7)
    for m in range(1, 31):
        p = np.round(rng.uniform(0, 0.1, m), 2)  # ties
        p[rng.uniform(size=m) < 0.2] = np.nan
        q = np.where(np.isnan(p), 1.0, p)
        order = np.argsort(q, kind="stable")
        expected = np.empty(m)
        expected[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        assert holm(list(p)) == pytest.approx(list(expected), rel=1e-12, abs=0)
        x = rng.normal(0.3, 1.0, m + 1)
        half = stats.t.ppf(0.975, m) * x.std(ddof=1) / math.sqrt(m + 1)
        s = summarize(x)
        assert (s.low, s.high) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-9)
    assert holm([]) == []


def test_power_is_finite_where_the_far_tail_is_not() -> None:
    """The noncentral t's far tail is NaN in scipy at some large nc (statsmodels' TTestPower passes it on);
    power counts it as 0, so the power and the smallest detectable effect stay defined for every n."""
    for n in range(2, 31):
        for effect in (0.5, 2.0, 4.0, 8.0, 16.0, 64.0):
            assert 0 < power(effect, 1.0, n, 0.01) <= 1
        assert math.isfinite(min_detectable_effect(1.0, n, alpha=0.01, target=0.9))
    assert power(4.0, 1.0, 4, 0.01) == pytest.approx(0.8514798720874623, rel=1e-9)
    assert min_detectable_effect(1.0, 2, alpha=0.01, target=0.9) == pytest.approx(74.04747294443331, rel=1e-9)


def test_min_detectable_effect_has_the_target_power() -> None:
    for n, sd, alpha in ((3, 0.01, 0.05), (5, 2.0, 0.05 / 8), (10, 1.0, 0.05)):
        mde = min_detectable_effect(sd, n, alpha=alpha)
        assert power(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-9)
        assert power(0.95 * mde, sd, n, alpha) < 0.8 < power(1.05 * mde, sd, n, alpha)
    # large n: close to the normal approximation (z_0.975 + z_0.8) sd / sqrt(n) = 2.80 / 10, a bit above
    assert 0.2802 < min_detectable_effect(1.0, 100) < 0.29
    assert min_detectable_effect(2.0, 5) == pytest.approx(2 * min_detectable_effect(1.0, 5))
    assert math.isnan(min_detectable_effect(1.0, 1)) and math.isnan(min_detectable_effect(0.0, 5))


# ---------------------------------------------------------------------------------------------------------
# Random-effects pooling (DerSimonian-Laird, HKSJ) on hand-computed numbers


def test_two_tissues_with_equal_variance_pool_to_their_mean() -> None:
    # y = 0.02, 0.10, v = 1e-4 each: equal weights whatever tau^2, so the pooled mean is the plain mean 0.06.
    # Q = 2 * 0.04^2 / 1e-4 = 32, C = 2e4 - 2e8 / 2e4 = 1e4, tau^2 = (32 - 1) / 1e4 = 0.0031.
    p = random_effects([0.02, 0.10], [1e-4, 1e-4])
    assert p.k == 2 and p.mean == pytest.approx(0.06) and p.weights == pytest.approx((0.5, 0.5))
    assert p.q == pytest.approx(32.0) and p.tau2 == pytest.approx(0.0031) and p.i2 == pytest.approx(31 / 32)
    se = math.sqrt((1e-4 + 0.0031) / 2)  # 1 / sum w_i, w_i = 1 / (v_i + tau^2)
    z = 1.959963984540054
    assert p.se == pytest.approx(se)
    assert (p.ci_low, p.ci_high) == pytest.approx((0.06 - z * se, 0.06 + z * se))
    # HKSJ: sum w_rel (y - mean)^2 / (k - 1) = 0.04^2; t_{0.975, 1} = 12.706204736174698
    t1 = 12.706204736174698
    assert p.hksj_se == pytest.approx(0.04)
    assert (p.hksj_low, p.hksj_high) == pytest.approx((0.06 - t1 * 0.04, 0.06 + t1 * 0.04))
    used = max(se, 0.04)
    assert (p.low, p.high) == pytest.approx((0.06 - t1 * used, 0.06 + t1 * used))
    assert p.p_value == pytest.approx(2 * (0.5 - math.atan(0.06 / used) / math.pi))  # t with 1 df: Cauchy


def test_dersimonian_laird_tau2_of_three_tissues_by_hand() -> None:
    y, v = [0.1, 0.2, 0.4], [0.01, 0.02, 0.01]
    # fixed-effect weights 100, 50, 100 (sum 250): mean 60 / 250 = 0.24; Q = 100 * 0.14^2 + 50 * 0.04^2 +
    # 100 * 0.16^2 = 4.6; C = 250 - (100^2 + 50^2 + 100^2) / 250 = 160; tau^2 = (4.6 - 2) / 160 = 0.01625
    p = random_effects(y, v)
    assert p.q == pytest.approx(4.6) and p.tau2 == pytest.approx(0.01625) and p.i2 == pytest.approx(2.6 / 4.6)
    w = [1 / (0.01 + 0.01625), 1 / (0.02 + 0.01625), 1 / (0.01 + 0.01625)]
    mean = sum(wi * yi for wi, yi in zip(w, y)) / sum(w)
    assert p.mean == pytest.approx(mean) and p.se == pytest.approx(math.sqrt(1 / sum(w)))
    assert p.weights == pytest.approx(tuple(wi / sum(w) for wi in w))
    hksj = math.sqrt(sum(wi * (yi - mean) ** 2 for wi, yi in zip(w, y)) / (2 * sum(w)))
    t2 = 4.302652729749464  # t_{0.975, 2}
    assert p.hksj_se == pytest.approx(hksj)
    assert (p.hksj_low, p.hksj_high) == pytest.approx((mean - t2 * hksj, mean + t2 * hksj))
    used = max(hksj, math.sqrt(1 / sum(w)))
    assert (p.low, p.high) == pytest.approx((mean - t2 * used, mean + t2 * used))


def test_a_negative_dl_tau2_is_zero_and_the_estimate_is_the_fixed_effect_one() -> None:
    # Q = 100 * (0.1 - 0.1033)^2 * 2 + 100 * (0.11 - 0.1033)^2 = 0.0067 < k - 1 = 2: tau^2 = 0
    p = random_effects([0.1, 0.11, 0.1], [0.01, 0.01, 0.01])
    assert p.tau2 == 0.0 and p.i2 == 0.0
    assert p.mean == pytest.approx(0.31 / 3) and p.se == pytest.approx(math.sqrt(0.01 / 3))
    same = random_effects([0.05, 0.05], [0.01, 0.02])  # Q = 0: no spread at all
    assert same.mean == pytest.approx(0.05) and same.tau2 == 0.0 and same.i2 == 0.0 and same.hksj_se == 0.0
    assert same.low < 0.05 < same.high  # the DL standard error keeps the interval open
    with pytest.raises(ValueError, match="k >= 2"):
        random_effects([0.1], [0.01])
    with pytest.raises(ValueError, match="variances > 0"):
        random_effects([0.1, 0.2], [0.01, 0.0])


# -------------------------------------------------------------------------- variation over diffusion time


def test_time_effect_rm_anova_by_hand() -> None:
    # 3 seeds x 4 times. Grand mean m = 32/12 = 8/3; time means 1, 7/3, 3, 13/3; seed means 5/2, 13/4, 9/4.
    x = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 4.0, 5.0], [0.0, 3.0, 2.0, 4.0]])
    ss_time = 3 * ((5 / 3) ** 2 + (1 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2)  # = 52/3
    ss_seed = 4 * ((1 / 6) ** 2 + (7 / 12) ** 2 + (5 / 12) ** 2)  # = 13/6
    ss_total = (1 + 4 + 9 + 16) + (4 + 4 + 16 + 25) + (0 + 9 + 4 + 16) - 12 * (8 / 3) ** 2  # = 68/3
    ss_resid = ss_total - ss_time - ss_seed  # = 19/6
    assert (ss_time, ss_seed, ss_total, ss_resid) == pytest.approx((52 / 3, 13 / 6, 68 / 3, 19 / 6))
    f = (ss_time / 3) / (ss_resid / 6)  # df (T - 1, (S - 1)(T - 1)) = (3, 6): F = 208/19
    out = time_effect(x)
    assert out.f == pytest.approx(f) and out.f == pytest.approx(208 / 19)
    assert (out.df_time, out.df_resid, out.n_seeds, out.n_times) == (3, 6, 3, 4)
    assert out.p_value == pytest.approx(stats.f.sf(208 / 19, 3, 6))
    assert out.p_lower_bound == pytest.approx(stats.f.sf(208 / 19, 1, 2))  # Greenhouse-Geisser lower bound
    assert out.time_means == pytest.approx((1.0, 7 / 3, 3.0, 13 / 3)) and out.range_t == pytest.approx(10 / 3)
    # seed-to-seed SD at a fixed time, pooled: variances over seeds 1, 1/3, 1, 1/3 -> sqrt(2/3)
    assert out.seed_sd == pytest.approx(math.sqrt(2 / 3))


def test_time_effect_equals_statsmodels_anova_rm() -> None:
    pd = pytest.importorskip("pandas")
    from statsmodels.stats.anova import AnovaRM

    x = np.random.default_rng(3).normal(size=(4, 5)) + np.linspace(0, 1, 5)
    long = pd.DataFrame([(s, t, x[s, t]) for s in range(4) for t in range(5)], columns=["seed", "t", "y"])
    table = AnovaRM(long, "y", "seed", within=["t"]).fit().anova_table
    out = time_effect(x)
    assert out.f == pytest.approx(table["F Value"].iloc[0])
    assert out.p_value == pytest.approx(table["Pr > F"].iloc[0])


def test_time_effect_no_time_effect() -> None:
    # seeds far apart, every time mean the same (5): SS_time = 0, F = 0, p = 1; range 0, large seed SD
    x = np.array([[10.0, 11.0, 9.0, 10.0], [0.0, -1.0, 1.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    out = time_effect(x)
    assert out.f == pytest.approx(0.0) and out.p_value == pytest.approx(1.0)
    assert out.range_t == pytest.approx(0.0) and out.seed_sd > 4
    # pure noise around seed offsets, no time trend: F small, p large
    noise = np.array([[0.1, -0.2, 0.05, 0.0], [-0.1, 0.1, 0.0, 0.05], [0.0, 0.1, -0.05, -0.05]])
    out = time_effect(noise + np.array([[0.0], [3.0], [-2.0]]))
    assert out.f < 1 and out.p_value > 0.5


def test_time_effect_degenerate_cases_give_nan_p() -> None:
    one_seed = time_effect([[0.1, 0.2, 0.3]])
    assert math.isnan(one_seed.p_value) and math.isnan(one_seed.f) and math.isnan(one_seed.seed_sd)
    assert one_seed.range_t == pytest.approx(0.2)
    one_time = time_effect([[0.1], [0.2], [0.4]])
    assert math.isnan(one_time.p_value) and one_time.range_t == 0.0
    # additive (seed + time, no interaction): zero residual, nothing to test against
    additive = time_effect(np.array([[0.0], [1.0], [5.0]]) + np.array([0.1, 0.3, 0.2]))
    assert math.isnan(additive.p_value) and math.isnan(additive.p_lower_bound)
    assert math.isnan(time_effect(np.full((3, 4), 0.5)).p_value)
    assert math.isnan(time_effect(np.zeros((0, 4))).p_value)
    # a seed with a missing value is dropped (the design must be complete); an all-missing time too
    x = np.array([[1.0, 2.0, 3.0, 4.0, np.nan], [2.0, 2.0, 4.0, 5.0, np.nan], [0.0, 3.0, 2.0, 4.0, np.nan],
                  [1.0, np.nan, 2.0, 2.0, np.nan]])
    out = time_effect(x)
    assert (out.n_seeds, out.n_times) == (3, 4) and out.f == pytest.approx(208 / 19)
    with pytest.raises(ValueError, match="seeds x times"):
        time_effect([0.1, 0.2])
