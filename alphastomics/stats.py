"""Statistics for comparing variants across seeds and sections (DESIGN section 6, "Statistics").

- ``summarize``: mean and a 95 % Student-t interval over seeds (each seed's value is one observation;
  sections are averaged within a seed first, so the interval reflects training-seed variation).
- ``relative_change``: (variant - baseline) / |baseline|.
- ``paired_test``: Wilcoxon signed-rank test (Wilcoxon 1945, via ``scipy.stats.wilcoxon``) on differences
  paired by (seed, section); with fewer than ``MIN_WILCOXON_PAIRS`` non-zero differences the exact two-sided
  Wilcoxon p can never fall below 0.05 (n = 5 gives at least 2/32), so it falls back to the paired t-test and
  says so; with fewer than 2 pairs there is no test and the result is "not significant".
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05
MIN_WILCOXON_PAIRS = 6


@dataclass(frozen=True)
class Summary:
    """Mean and two-sided t interval of a sample; ``low``/``high`` are NaN when n < 2."""

    mean: float
    low: float
    high: float
    std: float
    n: int
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of a variant against a baseline over matched (seed, section) pairs."""

    n: int  # matched pairs with finite values on both sides
    method: str  # "wilcoxon" | "paired-t" | "none"
    statistic: float
    p_value: float
    significant: bool  # p < alpha; False whenever no test could be run
    mean_difference: float  # mean of variant - baseline
    median_difference: float
    alpha: float = ALPHA
    note: str = ""

    @property
    def verdict(self) -> str:
        return "significant" if self.significant else "not significant"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def _finite(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64)
    return a[np.isfinite(a)]


def summarize(values: Iterable[float], *, level: float = 0.95) -> Summary:
    """mean ± t_{(1+level)/2, n-1} * s / sqrt(n) over the finite values (s = sample std, ddof 1)."""
    a = _finite(values)
    n = int(a.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0, level)
    mean = float(a.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, math.nan, 1, level)
    sd = float(a.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Summary(mean, mean - half, mean + half, sd, n, level)


def relative_change(variant: float, baseline: float) -> float:
    """(variant - baseline) / |baseline|; NaN when the baseline is 0 or either value is not finite."""
    if not (math.isfinite(variant) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return (variant - baseline) / abs(baseline)


def paired_test(
    variant: Mapping[Hashable, float], baseline: Mapping[Hashable, float], *, alpha: float = ALPHA
) -> PairedTest:
    """Two-sided paired test of variant vs baseline on the keys (e.g. (seed, section)) both hold."""
    keys = [k for k in variant if k in baseline]
    d = np.array([float(variant[k]) - float(baseline[k]) for k in keys], dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return PairedTest(0, "none", math.nan, math.nan, False, math.nan, math.nan, alpha, "no matched pairs")
    mean_d, med_d = float(d.mean()), float(np.median(d))
    if n < 2:
        return PairedTest(n, "none", math.nan, math.nan, False, mean_d, med_d, alpha, "fewer than 2 pairs")
    if not np.any(d != 0):
        return PairedTest(n, "none", math.nan, 1.0, False, mean_d, med_d, alpha, "all differences are zero")
    nonzero = int(np.count_nonzero(d))
    if nonzero >= MIN_WILCOXON_PAIRS:
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        method, note = "wilcoxon", ""
    else:
        res = stats.ttest_1samp(d, 0.0)
        method = "paired-t"
        note = f"{nonzero} non-zero differences: too few for Wilcoxon (needs {MIN_WILCOXON_PAIRS})"
    p = float(res.pvalue)
    stat = float(res.statistic)
    significant = bool(math.isfinite(p) and p < alpha)
    return PairedTest(n, method, stat, p, significant, mean_d, med_d, alpha, note)
