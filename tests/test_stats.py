"""Statistics on hand-computed numbers: t interval, relative change, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alphastomics.stats import MIN_WILCOXON_PAIRS, paired_test, relative_change, summarize


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


def keyed(values: np.ndarray) -> dict[tuple[int, str], float]:
    """Values over 3 seeds x 4 sections, keyed by (seed, section)."""
    return {(s, f"sec{j}"): float(values[s * 4 + j]) for s in range(3) for j in range(4)}


def test_paired_test_clearly_significant() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.3, size=12)
    out = paired_test(keyed(base - 0.2 - rng.uniform(0, 0.01, 12)), keyed(base))
    # every one of 12 differences is negative: exact two-sided Wilcoxon p = 2 / 2^12
    assert out.method == "wilcoxon" and out.n == 12
    assert out.p_value == pytest.approx(2 / 2**12)
    assert out.significant and out.verdict == "significant"
    assert out.mean_difference < 0


def test_paired_test_clearly_insignificant() -> None:
    base = np.linspace(1, 2, 12)
    noise = np.array([0.1, -0.1, 0.05, -0.05, 0.2, -0.2, 0.01, -0.01, 0.3, -0.3, 0.15, -0.15])
    out = paired_test(keyed(base + noise), keyed(base))
    assert out.method == "wilcoxon" and not out.significant and out.p_value > 0.5
    assert out.to_dict()["verdict"] == "not significant"


def test_pairs_are_matched_by_key_not_order() -> None:
    base = keyed(np.arange(12.0))
    variant = {k: v + 1.0 for k, v in reversed(list(base.items()))}
    variant[(9, "extra")] = 100.0  # unmatched: ignored
    out = paired_test(variant, base)
    assert out.n == 12 and out.mean_difference == pytest.approx(1.0)


def test_too_few_pairs_falls_back_and_says_so() -> None:
    out = paired_test({1: 1.5, 2: 2.4, 3: 3.6}, {1: 1.0, 2: 2.0, 3: 3.0})
    assert out.method == "paired-t" and out.n == 3 and str(MIN_WILCOXON_PAIRS) in out.note
    # differences 0.5, 0.4, 0.6: mean 0.5, s 0.1 -> t = 0.5 / (0.1 / sqrt 3)
    assert out.statistic == pytest.approx(0.5 / (0.1 / math.sqrt(3)))
    single = paired_test({1: 2.0}, {1: 1.0})
    assert single.method == "none" and single.n == 1 and not single.significant
    same = paired_test({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0})
    assert not same.significant and same.p_value == 1.0
    assert paired_test({1: 1.0}, {2: 1.0}).n == 0
