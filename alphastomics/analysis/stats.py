"""Statistics of the verdict (DESIGN section 6, "Statistics"): paired tests over seeds, Holm, power.

The unit of replication is one trained model (data set, variant, seed); two variants are compared on the
seeds both ran (same seed: same data order, crops and noise), one difference per seed.

- ``summarize``: mean and a 95 % Student-t interval (``scipy.stats.ttest_1samp(...).confidence_interval``).
- ``relative_change``: (variant - baseline) / |baseline|.
- ``paired``: mean paired difference, its 95 % t interval, the paired t-test p (``scipy.stats.ttest_1samp``
  on the differences) and the exact sign-flip permutation p (``scipy.stats.permutation_test``, all 2^n sign
  patterns for n <= ``EXACT_MAX_N``).
- ``holm``: Holm (1979) step-down adjusted p-values (``statsmodels.stats.multitest.multipletests``).
- ``min_detectable_effect``: the smallest true mean difference that a two-sided one-sample t-test on n
  differences with standard deviation s detects with the given power at level alpha; power from the
  noncentral t distribution (``scipy.stats.nct``), solved with ``scipy.optimize.brentq``. Not statsmodels'
  ``TTestPower``: see ``power``.
- ``seeds_needed``: the smallest n for which that effect is at most a target (the power plan).
- ``random_effects``: a random-effects meta-analysis of k estimates with known variances (the per-tissue
  relative effects of the verdict's ``across_tissues``): DerSimonian-Laird tau^2
  (``statsmodels.stats.meta_analysis.combine_effects``, ``method_re="dl"``) truncated at 0, with the
  normal-quantile DL interval and the Hartung-Knapp-Sidik-Jonkman t interval.
- ``time_effect``: does a per-seed quantity (a layer's gate mean) vary across diffusion time more than
  across seeds? Repeated-measures one-way ANOVA, seeds the subjects, time the within factor
  (``scipy.stats.f``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.80
LEVEL = 0.95
EXACT_MAX_N = 12  # 2^12 = 4096 sign patterns: enumerated; above, a seeded Monte Carlo draw of 9,999
MONTE_CARLO_RESAMPLES = 9_999


@dataclass(frozen=True)
class Summary:
    """Mean and two-sided t interval of a sample; ``low``/``high`` are NaN when n < 2."""

    mean: float
    low: float
    high: float
    std: float
    n: int
    level: float = LEVEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64)
    return a[np.isfinite(a)]


def summarize(values: Iterable[float], *, level: float = LEVEL) -> Summary:
    """mean ± t_{(1+level)/2, n-1} * s / sqrt(n) over the finite values (s = sample std, ddof 1)."""
    a = _finite(values)
    n = int(a.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0, level)
    mean = float(a.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, math.nan, 1, level)
    with warnings.catch_warnings():  # scipy warns of precision loss on (nearly) equal values: zero width
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.ttest_1samp(a, 0.0).confidence_interval(confidence_level=level)
    return Summary(mean, float(ci.low), float(ci.high), float(a.std(ddof=1)), n, level)


def relative_change(variant: float, baseline: float) -> float:
    """(variant - baseline) / |baseline|; NaN when the baseline is 0 or either value is not finite."""
    if not (math.isfinite(variant) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return (variant - baseline) / abs(baseline)


@dataclass(frozen=True)
class Paired:
    """One paired comparison: differences d_i = variant_i - reference_i over n matched units."""

    n: int
    mean_difference: float
    sd_difference: float  # sample std of the differences (ddof 1); NaN when n < 2
    ci_low: float  # 95 % t interval of the mean difference
    ci_high: float
    t_statistic: float
    p_value: float  # two-sided paired t-test; NaN when n < 2 or the differences have no spread
    permutation_p: float  # two-sided sign-flip permutation p; NaN when n < 2
    permutation_exact: bool  # all 2^n sign patterns enumerated

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_flip_p(d: Sequence[float]) -> tuple[float, bool]:
    """Two-sided p of mean(d) under H0 "each difference is symmetric about 0": the share of sign patterns
    s in {-1, 1}^n with |mean(s * d)| >= |mean(d)|; exact (all 2^n) for n <= EXACT_MAX_N."""
    a = np.asarray(d, dtype=np.float64)
    if a.size < 2:  # one difference: both sign patterns are as extreme, nothing to test
        return math.nan, False
    exact = a.size <= EXACT_MAX_N
    res = stats.permutation_test(
        (a,),
        np.mean,
        permutation_type="samples",  # one sample: flips the sign of each observation
        alternative="two-sided",
        n_resamples=math.inf if exact else MONTE_CARLO_RESAMPLES,
        rng=np.random.default_rng(0),
    )
    return float(res.pvalue), exact


def paired(variant: Sequence[float], reference: Sequence[float], *, level: float = LEVEL) -> Paired:
    """Paired comparison of two equally long sequences (matched by position); non-finite pairs dropped."""
    v = np.asarray(variant, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if v.shape != r.shape:
        raise ValueError(f"paired: {v.size} variant values but {r.size} reference values")
    d = (v - r)[np.isfinite(v) & np.isfinite(r)]
    n = int(d.size)
    nan = math.nan
    if n == 0:
        return Paired(0, nan, nan, nan, nan, nan, nan, nan, False)
    mean = float(d.mean())
    if n < 2:
        return Paired(1, mean, nan, nan, nan, nan, nan, nan, False)
    perm, exact = sign_flip_p(d)
    sd = float(d.std(ddof=1))
    s = summarize(d, level=level)
    if sd == 0:  # every seed moved by the same amount: the t statistic is undefined
        return Paired(n, mean, 0.0, mean, mean, nan, nan, perm, exact)
    res = stats.ttest_1samp(d, 0.0)
    return Paired(n, mean, sd, s.low, s.high, float(res.statistic), float(res.pvalue), perm, exact)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p: sort p ascending, p~_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)).

    A NaN p (no test possible) counts as 1: it stays in the family size m, so untestable contrasts never
    make the others look less multiple (statsmodels' ``multipletests`` has no NaN rule of its own)."""
    from statsmodels.stats.multitest import multipletests

    p = np.array([1.0 if not math.isfinite(x) else float(x) for x in pvalues])
    if p.size == 0:
        return []
    return [float(x) for x in multipletests(p, method="holm")[1]]


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample t-test on n differences: P(|T| > t_{1-alpha/2, n-1}) with
    T ~ noncentral t(df = n - 1, nc = effect * sqrt(n) / sd).

    The same formula as ``statsmodels.stats.power.TTestPower().power(effect / sd, n, alpha)``, which is not
    used: it adds the far tail as it comes from scipy, NaN at some large nc, so its power is NaN where the
    power is well defined (n = 4, effect = 4 sd, alpha = 0.01: 0.85; n = 2, effect = 8 sd, alpha = 0.05:
    0.63), and its ``solve_power`` (the smallest detectable effect, the seeds needed) then stops at a bound
    (n = 2, alpha = 0.01, power 0.9: 10 sd instead of 74 sd) and elsewhere solves to 1e-5, not 1e-12."""
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = effect * math.sqrt(n) / sd
    upper, lower = float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))
    # The far tail is negligible once nc is large, where scipy's nct.cdf can return NaN: count it as 0.
    return upper + (lower if math.isfinite(lower) else 0.0)


def min_detectable_effect(sd: float, n: int, *, alpha: float = ALPHA, target: float = POWER) -> float:
    """Smallest |mean difference| the paired t-test detects with power ``target`` (noncentral t); NaN when
    n < 2 or the spread is not a positive finite number."""
    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    # Solved in units of sd (the power depends on effect / sd only), so a tiny spread cannot overflow nc.
    hi = 1.0
    while power(hi, 1.0, n, alpha) < target:
        hi *= 2
        if hi > 1e6:
            return math.nan
    return sd * float(optimize.brentq(lambda e: power(e, 1.0, n, alpha) - target, 0.0, hi, xtol=1e-12))


def seeds_needed(sd: float, effect: float, *, alpha: float = ALPHA, target: float = POWER,
                 most: int = 1_000_000) -> int | None:
    """Smallest n >= 2 whose smallest detectable effect (``min_detectable_effect``) is at most ``effect``:
    the seeds a paired design needs at this spread; None when the spread is not estimable or n > ``most``."""
    if not (math.isfinite(sd) and sd > 0 and math.isfinite(effect) and effect > 0):
        return None
    if min_detectable_effect(sd, 2, alpha=alpha, target=target) <= effect:
        return 2
    lo, hi = 2, 4
    while min_detectable_effect(sd, hi, alpha=alpha, target=target) > effect:  # the effect shrinks with n
        lo, hi = hi, hi * 2
        if hi > most:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if min_detectable_effect(sd, mid, alpha=alpha, target=target) <= effect else (mid, hi)
    return hi


@dataclass(frozen=True)
class Pooled:
    """A random-effects estimate over k >= 2 studies (here: tissues), each a mean y_i with known variance v_i.

    ``mean`` = sum w_i y_i / sum w_i with w_i = 1 / (v_i + tau2); ``se`` = sqrt(1 / sum w_i) (DerSimonian-
    Laird); ``hksj_se`` = sqrt(sum w_i (y_i - mean)^2 / ((k - 1) sum w_i)) (Hartung-Knapp-Sidik-Jonkman).
    ``low``/``high`` and ``p_value``: the t test with k - 1 degrees of freedom on the larger of the two
    standard errors (HKSJ with its scale floored at 1), which the verdict decides on."""

    k: int
    mean: float
    se: float
    ci_low: float  # DL: mean -+ z_{1 - alpha/2} se
    ci_high: float
    hksj_se: float
    hksj_low: float  # HKSJ: mean -+ t_{1 - alpha/2, k-1} hksj_se
    hksj_high: float
    low: float  # mean -+ t_{1 - alpha/2, k-1} max(se, hksj_se)
    high: float
    p_value: float
    tau2: float  # DL between-study variance, truncated at 0
    i2: float  # max(0, (Q - (k - 1)) / Q): the share of the spread of the y_i not explained by the v_i
    q: float  # Cochran's Q = sum v_i^-1 (y_i - fixed-effect mean)^2
    weights: tuple[float, ...]  # w_i / sum w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_effects(effects: Sequence[float], variances: Sequence[float], *, level: float = LEVEL) -> Pooled:
    """DerSimonian-Laird random-effects pooling of ``effects`` with known within-study ``variances`` (each
    finite and > 0, k >= 2). statsmodels' DL tau^2 = (Q - (k - 1)) / C is not truncated; a negative value
    is taken as 0 (the usual DL rule), which makes the random-effects estimate the fixed-effect one."""
    from statsmodels.stats.meta_analysis import combine_effects

    y = np.asarray(effects, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    finite = np.isfinite(y).all() and np.isfinite(v).all()
    if y.size < 2 or y.shape != v.shape or not (finite and (v > 0).all()):
        raise ValueError(f"random_effects: needs k >= 2 finite effects with variances > 0, got {y} and {v}")
    alpha = 1 - level
    # Q = 0 (identical effects): statsmodels' own I^2 divides by it
    with np.errstate(divide="ignore", invalid="ignore"):
        res = combine_effects(y, v, method_re="dl", alpha=alpha)
        dl = res.conf_int(alpha=alpha, use_t=False)
        hk = res.conf_int(alpha=alpha, use_t=True)
    k = int(y.size)
    q = float(res.q)
    if res.tau2 > 0:
        tau2, mean, se = float(res.tau2), float(res.mean_effect_re), float(res.sd_eff_w_re)
        dl_ci, hk_ci, hk_se = dl[1], hk[3], float(res.sd_eff_w_re_hksj)
        w = np.asarray(res.weights_rel_re, dtype=np.float64)
    else:  # tau^2 truncated at 0: the random-effects estimate is the fixed-effect one
        tau2, mean, se = 0.0, float(res.mean_effect_fe), float(res.sd_eff_w_fe)
        dl_ci, hk_ci, hk_se = dl[0], hk[2], float(res.sd_eff_w_fe_hksj)
        w = np.asarray(res.weights_rel_fe, dtype=np.float64)
    used = max(se, hk_se)
    crit = float(stats.t.ppf((1 + level) / 2, k - 1))
    p = float(2 * stats.t.sf(abs(mean) / used, k - 1)) if used > 0 else math.nan
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    return Pooled(k, mean, se, float(dl_ci[0]), float(dl_ci[1]), hk_se, float(hk_ci[0]), float(hk_ci[1]),
                  mean - crit * used, mean + crit * used, p, tau2, i2, q, tuple(float(x) for x in w))


@dataclass(frozen=True)
class TimeEffect:
    """Repeated-measures one-way ANOVA of an (S seeds x T times) matrix, and the two spreads it compares.

    ``f`` = MS_time / MS_residual with ``df_time`` = T - 1 and ``df_resid`` = (S - 1)(T - 1); ``p_value``
    its upper tail in the F distribution; ``p_lower_bound`` the same F on (1, S - 1) degrees of freedom
    (the Greenhouse-Geisser lower-bound correction, valid whatever the sphericity). ``time_means`` the
    mean over seeds at each time, ``range_t`` their max - min; ``seed_sd`` the seed-to-seed standard
    deviation at a fixed time, pooled over times: sqrt(mean over t of the ddof-1 variance over seeds).
    ``n_seeds`` / ``n_times`` count the rows and columns used (after dropping non-finite ones)."""

    f: float
    p_value: float
    p_lower_bound: float
    df_time: int
    df_resid: int
    n_seeds: int
    n_times: int
    time_means: tuple[float, ...]
    range_t: float
    seed_sd: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_effect(values: Sequence[Sequence[float]] | np.ndarray) -> TimeEffect:
    """Whether a quantity varies across diffusion time more than across seeds: ``values`` is (S seeds x T
    time bins), e.g. the per-seed gate mean of one variant and layer at each of ``evaluation.gate_times``.

    Repeated-measures one-way ANOVA with seeds as subjects (blocks) and time as the within factor; with one
    value per (seed, time) it equals the two-way ANOVA without replication (the seed x time interaction is
    the error term). With grand mean m, seed means r_s and time means c_t:
    SS_time = S sum_t (c_t - m)^2, SS_resid = sum_st (x_st - r_s - c_t + m)^2,
    F = [SS_time / (T - 1)] / [SS_resid / ((S - 1)(T - 1))], p = P(F_{T-1, (S-1)(T-1)} >= F).

    Assumptions: a complete, balanced design (every seed measured at every time; a time with no finite
    value is dropped, then every seed with a non-finite value); the additive model x_st = mu + seed_s +
    time_t + e_st, the seed a random block; residuals independent, normal, of one variance; sphericity
    (equal variance of the difference between any two times) for ``p_value`` when T > 2: time bins of one
    model are correlated (nearby noise levels alike), which can make it too small, and ``p_lower_bound``
    does not need that assumption. Each x_st is itself an estimate (a mean over cells and sections): its
    sampling noise goes into the residual with the seed-to-seed scatter.

    ``f``, ``p_value`` and ``p_lower_bound`` are NaN (no exception) with fewer than 2 seeds or 2 times, or
    a residual variance of zero (a purely additive or constant matrix: no error to test against).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"time_effect: needs a (seeds x times) matrix, got shape {x.shape}")
    x = x[:, np.isfinite(x).any(axis=0)] if x.size else x
    x = x[np.isfinite(x).all(axis=1)]
    n_s, n_t = x.shape
    nan = math.nan
    col = x.mean(axis=0) if n_s else np.full(n_t, nan)
    time_means = tuple(float(v) for v in col)
    range_t = float(col.max() - col.min()) if n_s and n_t else nan
    seed_sd = float(np.sqrt(x.var(axis=0, ddof=1).mean())) if n_s >= 2 and n_t else nan
    df_t, df_r = n_t - 1, (n_s - 1) * (n_t - 1)
    f = p = p_lb = nan
    if n_s >= 2 and n_t >= 2:
        m = x.mean()
        row = x.mean(axis=1, keepdims=True)
        ss_t = n_s * float(((col - m) ** 2).sum())
        ss_r = float(((x - row - col[None, :] + m) ** 2).sum())
        ss_total = float(((x - m) ** 2).sum())
        if ss_r > 1e-12 * ss_total:  # zero residual (up to rounding): no error to test against
            f = (ss_t / df_t) / (ss_r / df_r)
            p = float(stats.f.sf(f, df_t, df_r))
            p_lb = float(stats.f.sf(f, 1, n_s - 1))
    return TimeEffect(float(f), float(p), float(p_lb), int(max(df_t, 0)), int(max(df_r, 0)), int(n_s),
                      int(n_t), time_means, range_t, seed_sd)
