"""The variance decomposition (alphastomics.analysis.variance): components by hand and recovered by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alphastomics.analysis.variance import decompose, shares


def test_only_training_varies():
    y = np.broadcast_to(np.array([0.1, 0.3, 0.2])[:, None, None], (3, 4, 2)).copy()
    c = decompose(y)
    assert c["training"] == pytest.approx(np.var([0.1, 0.3, 0.2], ddof=1))
    assert c["section"] == c["interaction"] == c["draw"] == 0
    assert shares(c, 2, 1)["training_share"] == 1


def test_only_the_draw_varies():
    y = np.zeros((3, 2, 2))
    y[..., 0], y[..., 1] = 1.0, -1.0  # every cell: draws 1 and -1 -> within-cell variance 2
    c = decompose(y)
    assert c["draw"] == pytest.approx(2.0)
    assert c["training"] == c["section"] == c["interaction"] == 0  # truncated at 0
    s = shares(c, 2, 1)
    assert s["draw_share"] == 1 and s["variance"] == pytest.approx(1.0)  # 2 / (J K) with J = 2


def test_two_by_two_by_two_by_hand():
    y = np.array([[[1.0, 3.0], [2.0, 2.0]], [[5.0, 5.0], [4.0, 8.0]]])
    # cell means [[2, 2], [5, 6]]; grand 3.75; seed means 2, 5.5; section means 3.5, 4
    ms_draw = (1 + 1 + 0 + 0 + 0 + 0 + 4 + 4) / 4  # 2.5
    ms_int = 4 * 0.25**2  # residuals +-0.25: 0.25
    ms_seed = 2 * ((2 - 3.75) ** 2 + (5.5 - 3.75) ** 2)  # 12.25
    ms_sec = 2 * ((3.5 - 3.75) ** 2 + (4 - 3.75) ** 2)  # 0.25
    c = decompose(y)
    assert c["draw"] == pytest.approx(ms_draw)
    assert c["interaction"] == pytest.approx(max(0.0, ms_int - ms_draw / 2))
    assert c["training"] == pytest.approx((ms_seed - ms_int) / 2)
    assert c["section"] == pytest.approx(max(0.0, (ms_sec - ms_int) / 2))


def test_simulated_components_are_recovered():
    rng = np.random.default_rng(0)
    s, j, k = 400, 8, 4
    sd = {"training": 0.03, "section": 0.05, "interaction": 0.02, "draw": 0.04}
    y = (rng.normal(0, sd["training"], (s, 1, 1)) + rng.normal(0, sd["section"], (1, j, 1))
         + rng.normal(0, sd["interaction"], (s, j, 1)) + rng.normal(0, sd["draw"], (s, j, k)))
    c = decompose(y)
    for key in ("training", "interaction", "draw"):
        assert c[key] == pytest.approx(sd[key] ** 2, rel=0.15), key
    # the design that ran: shares add up to 1, and a seed's value varies as the model says
    sh = shares(c, j, k)
    assert sum(sh[f"{t}_share"] for t in ("training", "sections", "draw")) == pytest.approx(1.0)
    per_seed = y.mean(axis=(1, 2))
    assert per_seed.var(ddof=1) == pytest.approx(sh["variance"], rel=0.2)


def test_one_draw_cannot_separate_the_draw():
    y = np.random.default_rng(1).normal(size=(5, 2, 1))
    c = decompose(y)
    assert math.isnan(c["draw"]) and math.isnan(shares(c, 2, 1)["draw_share"])
