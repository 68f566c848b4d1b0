"""Metrics against hand-computed values on tiny point sets, and against scipy / scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import procrustes
from scipy.stats import special_ortho_group
from sklearn.metrics import adjusted_rand_score

from alphastomics import AlphaSTomicsError
from alphastomics.evaluation import metrics as M


def cloud(n: int = 60, d: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def similarity(x: np.ndarray, *, seed: int, reflect: bool, scale: float = 1.0) -> np.ndarray:
    """x rotated (and maybe reflected), scaled and translated."""
    d = x.shape[1]
    r = special_ortho_group.rvs(d, random_state=seed)
    if reflect:
        r = r @ np.diag([-1.0] + [1.0] * (d - 1))
    return scale * x @ r + np.arange(1, d + 1) * 7.5


# ---------------------------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("reflect", [False, True])
def test_perfect_prediction_is_perfect_under_rigid_motions(d: int, reflect: bool) -> None:
    true = cloud(d=d)
    pred = similarity(true, seed=d, reflect=reflect)
    assert M.knn_preservation(pred, true, k=10) == 1.0
    assert M.procrustes_rmsd(pred, true) == pytest.approx(0.0, abs=1e-10)
    assert M.procrustes_rssd(pred, true) == pytest.approx(0.0, abs=1e-10)
    assert M.distance_mse(pred, true) == pytest.approx(0.0, abs=1e-20)
    assert M.distance_pearson(pred, true) == pytest.approx(1.0)
    assert M.distance_spearman(pred, true) == pytest.approx(1.0)


def test_distance_mse_is_zero_under_scaling_but_plain_procrustes_is_not() -> None:
    true = cloud()
    pred = similarity(true, seed=3, reflect=True, scale=2.5)
    assert M.distance_mse(pred, true) == pytest.approx(0.0, abs=1e-20)
    assert M.procrustes_rmsd(pred, true, scaled=True) == pytest.approx(0.0, abs=1e-10)
    # Unscaled: pred is 2.5x too large, so after optimal rotation every cell is off by 1.5 |t_i - mean|.
    t = true - true.mean(axis=0)
    expected = 1.5 * np.sqrt((t**2).sum(axis=1).mean())
    assert M.procrustes_rmsd(pred, true) == pytest.approx(expected)


def test_unit_rms_radius() -> None:
    x = M.unit_rms(cloud(seed=4) * 9 + 3)
    assert np.allclose(x.mean(axis=0), 0.0)
    assert np.sqrt((x**2).sum(axis=1).mean()) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- hand values


def test_distance_mse_hand_computed() -> None:
    # Any 2-cell cloud at unit RMS radius has its one distance = 2, so three cells are needed.
    true = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # RMS radius sqrt(2/3)
    pred = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # centre (0, 1/3); squared radii 10/9,10/9,4/9
    # scaled true: factor sqrt(3/2) -> distances sqrt(3/2)*(2, 1, 1) for pairs (01, 02, 12)
    # scaled pred: radius^2 = (10/9+10/9+4/9)/3 = 8/9 -> factor 3/sqrt(8);
    # distances (2, sqrt2, sqrt2) * 3/sqrt8
    dt = np.sqrt(1.5) * np.array([2.0, 1.0, 1.0])
    dp = 3 / np.sqrt(8) * np.array([2.0, np.sqrt(2), np.sqrt(2)])
    assert M.distance_mse(pred, true) == pytest.approx(np.mean((dp - dt) ** 2))


def test_knn_known_permutation() -> None:
    # Six points on a line in well-separated pairs, so every neighbour set is unambiguous.
    true = np.array([[0.0, 0], [1, 0], [10, 0], [11, 0], [20, 0], [21, 0]])
    # Swap cells 1 and 2: 0's nearest is now cell 2 (was 1); 3's nearest is 1 (was 2); 4, 5 unchanged;
    # cell 1 sits at 10 next to 3 (was 0); cell 2 sits at 1 next to 0 (was 3). Overlap: 0,0,0,0,1,1 -> 2/6.
    pred = true[[0, 2, 1, 3, 4, 5]]
    assert M.knn_preservation(pred, true, k=1) == pytest.approx(2 / 6)
    # k = 2 on the same sets, by hand: pred kNN vs true kNN per cell
    # true: 0:{1,2} 1:{0,2} 2:{3,1} 3:{2,4}? 3 at 11: 2 (1), 4 (9) -> {2,4}; 4:{5,3}; 5:{4,3}
    # pred positions: 0@0, 2@1, 1@10, 3@11, 4@20, 5@21
    # pred: 0:{2,1} 2:{0,1} 1:{3,2} 3:{1,4} 4:{5,3} 5:{4,3}
    # overlaps: 0:{1,2}&{2,1}=2, 1:{0,2}&{3,2}=1, 2:{3,1}&{0,1}=1, 3:{2,4}&{1,4}=1, 4:2, 5:2 -> 9/12
    assert M.knn_preservation(pred, true, k=2) == pytest.approx(9 / 12)


def test_knn_excludes_self_even_for_duplicate_points() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [9.0, 0.0]])
    idx = M.knn_indices(x, 2)
    assert all(i not in idx[i] for i in range(len(x)))
    assert set(idx[0]) == {1, 2} and set(idx[1]) == {0, 2}


def test_procrustes_hand_computed() -> None:
    true = np.array([[1.0, 0.0], [-1.0, 0.0]])
    pred = np.array([[0.0, 3.0], [0.0, -3.0]])  # rotated by 90 degrees, 3x longer
    # rotation aligns it to (3,0),(-3,0): each cell 2 away -> RSSD sqrt(8), RMSD 2; scaled: exact
    assert M.procrustes_rssd(pred, true) == pytest.approx(np.sqrt(8))
    assert M.procrustes_rmsd(pred, true) == pytest.approx(2.0)
    assert M.procrustes_rmsd(pred, true, scaled=True) == pytest.approx(0.0, abs=1e-12)


def test_procrustes_allows_reflection() -> None:
    true = cloud(d=2, seed=8)
    mirror = true * np.array([-1.0, 1.0])  # not reachable by a rotation
    assert M.procrustes_rmsd(mirror, true) == pytest.approx(0.0, abs=1e-10)


def test_scaled_procrustes_matches_scipy_disparity() -> None:
    true = cloud(seed=1)
    pred = similarity(true, seed=2, reflect=False, scale=0.7) + cloud(seed=3) * 0.4
    _, _, disparity = procrustes(true, pred)  # both scaled to unit Frobenius norm
    t = true - true.mean(axis=0)
    ours = M.procrustes_rssd(pred, true, scaled=True) ** 2 / (t**2).sum()
    assert ours == pytest.approx(disparity, rel=1e-9)


def test_distance_correlations_match_scipy() -> None:
    true, pred = cloud(seed=5), cloud(seed=5) + 0.3 * cloud(seed=6)
    from scipy.spatial.distance import pdist

    assert M.distance_pearson(pred, true) == pytest.approx(stats.pearsonr(pdist(pred), pdist(true))[0])
    assert M.distance_spearman(pred, true) == pytest.approx(stats.spearmanr(pdist(pred), pdist(true))[0])


def test_pair_subsampling_is_seeded_and_close_to_exact() -> None:
    true, pred = cloud(n=300, seed=5), cloud(n=300, seed=5) + 0.5 * cloud(n=300, seed=6)
    exact = M.distance_pearson(pred, true)
    a = M.distance_pearson(pred, true, max_pairs=20_000, seed=1)
    assert a == M.distance_pearson(pred, true, max_pairs=20_000, seed=1)
    assert a != exact and a == pytest.approx(exact, abs=0.02)


def test_random_placement_is_a_permutation() -> None:
    true = cloud(seed=2)
    r = M.random_placement(true, np.random.default_rng(0))
    assert sorted(map(tuple, r)) == sorted(map(tuple, true))
    assert M.knn_preservation(r, true) < 0.5


# ---------------------------------------------------------------------------------------------- Moran's I


def test_morans_i_checkerboard_is_negative_hand_value() -> None:
    # 4 x 4 grid, x spacing 1, y spacing 1.1 (no ties that change a neighbour's value), k = 4.
    # Interior (4 cells): 4 rook neighbours of opposite sign -> z*lag = -1. Edge cells (8): 3 rook (opposite)
    # + one diagonal (same sign) -> -1/2. Corners (4): right, up, diagonal, two-right -> 0. I = -8/16.
    xs, ys = np.meshgrid(np.arange(4.0), np.arange(4.0) * 1.1, indexing="ij")
    pos = np.c_[xs.ravel(), ys.ravel()]
    ii, jj = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    checker = (-1.0) ** (ii + jj).ravel()
    assert M.morans_i(pos, checker, k=4)[0] == pytest.approx(-0.5)


def test_morans_i_gradient_is_positive_hand_value() -> None:
    # Five cells on a line, value = position, k = 2: z = -2..2, sum z^2 = 10;
    # neighbour means: -0.5, -1, 0, 1, 0.5 -> sum z*lag = 1 + 1 + 0 + 1 + 1 = 4 -> I = 0.4.
    pos = np.c_[np.arange(5.0), np.zeros(5)]
    assert M.morans_i(pos, np.arange(5.0), k=2)[0] == pytest.approx(0.4)


def test_morans_i_equals_dense_weight_formula() -> None:
    pos, vals = cloud(n=40, d=2, seed=9), cloud(n=40, d=5, seed=10)
    k = 6
    idx = M.knn_indices(pos, k)
    w = np.zeros((40, 40))
    w[np.repeat(np.arange(40), k), idx.ravel()] = 1.0 / k
    z = vals - vals.mean(axis=0)
    dense = [len(z) / w.sum() * z[:, g] @ w @ z[:, g] / (z[:, g] @ z[:, g]) for g in range(5)]
    assert np.allclose(M.morans_i(pos, vals, k=k), dense)


def test_morans_i_equals_scanpys() -> None:
    # scanpy.metrics.morans_i on the same binary kNN graph: the library's number, without its import cost
    import scanpy as sc

    pos, vals = cloud(n=500, d=3, seed=4), cloud(n=500, d=20, seed=5) ** 3
    k = 10
    graph = M.knn_graph(pos, k)
    expected = np.atleast_1d(sc.metrics.morans_i(graph, np.ascontiguousarray(vals.T)))
    np.testing.assert_allclose(M.morans_i(pos, vals, k=k), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(M.morans_i(pos, vals[:, 3], k=k), expected[[3]], rtol=1e-10)  # one gene, 1-D input


def test_morans_i_constant_gene_is_nan_and_correlation_ignores_it() -> None:
    pos = cloud(n=50, d=2, seed=1)
    vals = np.c_[pos[:, 0], pos[:, 1] ** 2, np.ones(50), np.random.default_rng(0).normal(size=50)]
    mi = M.morans_i(pos, vals, k=5)
    assert np.isnan(mi[2]) and np.isfinite(mi[[0, 1, 3]]).all()
    assert M.morans_i_correlation(pos, pos, vals, k=5) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- section truth


def same(a: float, b: float) -> bool:
    """Bit for bit, NaN equal to NaN."""
    return (np.isnan(a) and np.isnan(b)) or a == b


def gridded(n: int, seed: int) -> np.ndarray:
    """Integer points on a 6 x 6 grid: duplicate cells and many tied pair distances."""
    return np.random.default_rng(seed).integers(0, 6, size=(n, 2)).astype(np.float64)


TRUTH_CASES = {  # (pred, true, max_pairs)
    "all pairs": (cloud(n=40, seed=1), cloud(n=40, seed=2), M.MAX_PAIRS),
    "pair subset": (cloud(n=60, seed=1) * 3 + 1, cloud(n=60, seed=2), 300),  # 1,770 pairs > 300
    "ties, all pairs": (gridded(50, 3), gridded(50, 4), M.MAX_PAIRS),
    "ties, pair subset": (gridded(70, 3), gridded(70, 4), 500),
    "pred all equal": (np.full((30, 2), 0.1), cloud(n=30, d=2, seed=5), M.MAX_PAIRS),
    "true all equal": (cloud(n=30, d=2, seed=5), np.full((30, 2), 0.1), 100),
}


@pytest.mark.parametrize("case", list(TRUTH_CASES))
def test_section_truth_scores_equal_the_metric_functions(case: str) -> None:
    from scipy.spatial.distance import pdist

    pred, true, max_pairs = TRUTH_CASES[case]
    values = cloud(n=len(true), d=4, seed=7)
    truth = M.SectionTruth(true, values, k=5, seed=3, max_pairs=max_pairs)
    assert (truth.pairs is None) == (max_pairs == M.MAX_PAIRS)
    got = truth.distance_scores(pred)
    assert list(got) == ["distance_mse", "distance_pearson", "distance_spearman"]
    for name, value in got.items():  # the public functions: the same bits
        assert same(value, getattr(M, name)(pred, true, max_pairs=max_pairs, seed=3)), name
    # ... and the numbers of the definitions the functions had before the true side was cached
    dp, dt = M.pair_distances(pred, true, max_pairs=max_pairs, seed=3)
    assert np.array_equal(dt, truth.distances)
    if max_pairs == M.MAX_PAIRS:
        assert np.array_equal(dp, pdist(pred)) and np.array_equal(dt, pdist(true))
    sp, st = M.pair_distances(M.unit_rms(pred), M.unit_rms(true), max_pairs=max_pairs, seed=3)
    assert got["distance_mse"] == pytest.approx(np.mean((sp - st) ** 2), rel=1e-12, abs=1e-28)
    degenerate = np.ptp(dp) == 0 or np.ptp(dt) == 0
    assert degenerate == case.endswith("all equal")
    if degenerate:
        assert np.isnan(got["distance_pearson"]) and np.isnan(got["distance_spearman"])
    else:
        assert got["distance_pearson"] == stats.pearsonr(dp, dt)[0]
        assert got["distance_spearman"] == stats.spearmanr(dp, dt)[0]
    assert truth.knn_preservation(pred) == M.knn_preservation(pred, true, k=5)
    mi = M.morans_i(pred, values, k=5)
    assert np.array_equal(truth.morans, M.morans_i(true, values, k=5), equal_nan=True)
    assert np.array_equal(truth.morans_i(pred[:, :1]), M.morans_i(true, pred[:, :1], k=5), equal_nan=True)
    assert same(M.morans_i_agreement(mi, truth.morans), M.morans_i_correlation(pred, true, values, k=5))


def test_section_truth_is_frozen_and_reused() -> None:
    truth = M.SectionTruth(cloud(n=30), k=4)
    with pytest.raises(AttributeError):
        truth.k = 5  # a cached kNN or distance would no longer match
    assert truth.ranks is truth.ranks and truth.knn is truth.knn  # computed once
    with pytest.raises(AlphaSTomicsError, match="no 'values'"):
        _ = truth.morans
    with pytest.raises(AlphaSTomicsError, match="same shape"):
        truth.distance_scores(cloud(n=31))


def test_average_ranks_are_scipys_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for x in (rng.normal(size=1000), rng.integers(0, 7, size=1000).astype(float), np.zeros(5), np.ones(1)):
        assert np.array_equal(M._average_ranks(x), stats.rankdata(x))


# ---------------------------------------------------------------------------------------------- cell types


def typed_tissue(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 3, size=(150, 2))
    labels = np.array(["a", "b", "c"])[np.minimum((pos[:, 0]).astype(int), 2)]  # three vertical bands
    return pos, labels


def test_neighborhood_ari_nmi_perfect_and_matches_sklearn() -> None:
    pos, labels = typed_tissue()
    moved = similarity(pos, seed=1, reflect=True)
    assert M.neighborhood_ari(moved, pos, labels) == pytest.approx(1.0)
    assert M.neighborhood_nmi(moved, pos, labels) == pytest.approx(1.0)
    shuffled = M.random_placement(pos, np.random.default_rng(1))
    a = M.neighborhood_clusters(shuffled, labels, k=15, seed=0)
    b = M.neighborhood_clusters(pos, labels, k=15, seed=0)
    assert M.neighborhood_ari(shuffled, pos, labels) == pytest.approx(adjusted_rand_score(b, a))
    assert M.neighborhood_ari(shuffled, pos, labels) < 0.3


def test_ari_of_identical_labelings_is_one() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    assert adjusted_rand_score(labels, labels) == 1.0
    relabelled = np.array([5, 5, 3, 3, 9, 9, 9])
    assert adjusted_rand_score(labels, relabelled) == 1.0


def test_neighborhood_composition_hand_values() -> None:
    pos = np.array([[0.0, 0], [1, 0], [2.2, 0], [10, 0]])
    labels = np.array(["x", "y", "y", "x"])
    comp = M.neighborhood_composition(pos, labels, k=2)
    # 0: {1,2} -> y,y; 1: {0,2} -> x,y; 2: {1,0} -> y,x; 3: {2,1} -> y,y
    assert np.allclose(comp, [[0, 1], [0.5, 0.5], [0.5, 0.5], [0, 1]])


def test_single_type_gives_nan() -> None:
    pos = cloud(n=20, d=2)
    assert np.isnan(M.neighborhood_ari(pos, pos, np.array(["a"] * 20)))


# ---------------------------------------------------------------------------------------------- expression


def test_expression_metrics_hand_values() -> None:
    true = np.array([[1.0, 0.0, 2.0], [2.0, 0.0, 2.0], [3.0, 0.0, 2.0]])  # genes 2, 3 have no variance
    pred = np.array([[3.0, 1.0, 2.0], [2.0, 1.0, 2.0], [1.0, 1.0, 2.0]])
    assert M.expression_mse(pred, true) == pytest.approx((4 + 0 + 4 + 1 + 1 + 1) / 9)
    assert M.expression_pearson(pred, true) == pytest.approx(-1.0)  # only gene 1 counts
    flat = true.copy()
    flat[:, 0] = 5.0  # a constant prediction for a varying gene counts as r = 0
    assert M.expression_pearson(flat, true) == 0.0


def test_expression_pearson_matches_scipy_mean() -> None:
    true, pred = cloud(n=30, d=4, seed=1), cloud(n=30, d=4, seed=1) + cloud(n=30, d=4, seed=2)
    expected = np.mean([stats.pearsonr(pred[:, g], true[:, g])[0] for g in range(4)])
    assert M.expression_pearson(pred, true) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- diagnostics


def test_attention_sink_hand_built() -> None:
    n = 4
    attn = np.zeros((1, 2, n, n))
    attn[0, 0] = 1.0 / n  # head 0 uniform: share 1/4
    attn[0, 1, :, 2] = 0.7  # head 1: every query puts 0.7 on cell 2, 0.1 elsewhere
    attn[0, 1, :, [0, 1, 3]] = 0.1
    out = M.attention_sink(attn)
    assert out["share"][0].tolist() == pytest.approx([0.25, 0.7])
    assert out["index"][0, 1] == 2 and out["n"].tolist() == [4]


def test_attention_sink_ignores_padding() -> None:
    # 3 real cells + 1 padding row/column; the padding query attends only to cell 0 and must not count.
    attn = np.full((1, 1, 4, 4), 0.0)
    attn[0, 0, :3, :3] = [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.6, 0.3]]
    attn[0, 0, 3, 0] = 1.0
    out = M.attention_sink(attn, np.array([[True, True, True, False]]))
    assert out["share"][0, 0] == pytest.approx(1.45 / 3) and out["index"][0, 0] == 1


def test_gate_stats_fixed_bins() -> None:
    gate = np.array([[[0.05], [0.15], [0.15], [0.95], [0.5]]])
    mask = np.array([[True, True, True, True, False]])
    out = M.gate_stats(gate, mask)
    assert out["counts"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert out["mean"] == pytest.approx(0.325)
    assert out["std"] == pytest.approx(np.std([0.05, 0.15, 0.15, 0.95]))


def test_gate_stats_share_below_the_sparse_threshold() -> None:
    # two heads x 4 cells, the last cell padding: real scores 0.0, 0.05, 0.0999, 0.1 (not below: strict),
    # 0.5, 0.95 -> 3 of 6 below 0.1; the padding cell's 0.01 / 0.02 must not count.
    gate = np.array([[[0.0, 0.05], [0.0999, 0.1], [0.5, 0.95], [0.01, 0.02]]])
    mask = np.array([[True, True, True, False]])
    assert M.SPARSE_GATE == 0.1
    out = M.gate_stats(gate, mask)
    assert out["share_below"] == pytest.approx(3 / 6)
    assert {"mean", "std", "bins", "counts"} <= set(out)  # the keys before share_below stay
    assert M.gate_stats(np.full((1, 3, 2), 0.5))["share_below"] == 0.0
    assert np.isnan(M.gate_stats(gate, np.zeros((1, 4), dtype=bool))["share_below"])  # no real cell


def test_weighted_mean_skips_nan() -> None:
    assert M.weighted_mean([1.0, 3.0, np.nan], [1, 3, 10]) == pytest.approx(2.5)
    assert np.isnan(M.weighted_mean([np.nan], [1]))


# ---------------------------------------------------------------------------------------------- errors


def test_bad_input_errors() -> None:
    with pytest.raises(AlphaSTomicsError, match="same shape"):
        M.knn_preservation(cloud(n=10), cloud(n=11))
    with pytest.raises(AlphaSTomicsError, match="NaN or inf"):
        M.distance_mse(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(AlphaSTomicsError, match="at least 2"):
        M.procrustes_rmsd(np.zeros((1, 2)), np.zeros((1, 2)))


def test_expression_position_coupling_by_hand() -> None:
    # three cells: pair distances in space (0-1, 0-2, 1-2) = 1, 3, 2, in expression 5, 6, 1;
    # ranks 1 3 2 vs 2 3 1, d = -1 0 1: rho = 1 - 6 * 2 / (3 * 8) = 0.5
    x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    e = np.array([[0.0], [5.0], [6.0]])
    assert M.expression_position_coupling(x, e) == pytest.approx(0.5)
    # frame-free: rotated, reflected, moved and scaled positions give the same coupling
    rot = np.array([[0.0, -1.0], [-1.0, 0.0]])
    assert M.expression_position_coupling(3 * x @ rot + 7, e) == pytest.approx(0.5)
    # the consistency of a generated tissue (x, e) with a real one whose expression follows space exactly
    out = M.joint_consistency(x, e, x, x[:, :1])
    assert out == pytest.approx({"joint_coupling": 0.5, "joint_coupling_true": 1.0, "joint_consistency_error": 0.5})
    # constant expression: no coupling to speak of
    assert math.isnan(M.expression_position_coupling(x, np.ones((3, 2))))
    with pytest.raises(M.MetricInputError, match="'positions' and 'expression' have 3 and 2 cells"):
        M.expression_position_coupling(x, e[:2])


def test_expression_position_coupling_on_a_pair_subset_equals_the_chunked_one() -> None:
    rng = np.random.default_rng(3)
    x, e = rng.normal(size=(60, 2)), rng.normal(size=(60, 30))
    pairs = M._pair_index(60, 500, 0)
    expected = stats.spearmanr(M._distances(x, pairs), M._distances(e, pairs))[0]
    assert M.expression_position_coupling(x, e, max_pairs=500) == pytest.approx(expected, abs=1e-12)
    assert np.array_equal(M._distances_chunked(e, pairs, chunk=7), M._distances(e, pairs))


def test_procrustes_scores_are_the_four_functions_bit_for_bit() -> None:
    true = cloud(40, 2, seed=4)
    noise = np.random.default_rng(6).normal(size=true.shape)
    pred = similarity(true, seed=5, reflect=True, scale=0.7) + noise
    assert M.procrustes_scores(pred, true) == {
        "procrustes_rmsd": M.procrustes_rmsd(pred, true),
        "procrustes_rssd": M.procrustes_rssd(pred, true),
        "procrustes_rmsd_scaled": M.procrustes_rmsd(pred, true, scaled=True),
        "procrustes_rssd_scaled": M.procrustes_rssd(pred, true, scaled=True),
    }


# ------------------------------------------------------------------------------------------------------
# Directions (metrics.DIRECTIONS): declared, never guessed from a name


def test_directions_checked_by_hand() -> None:
    from alphastomics.analysis.runs import direction

    for name, want in (("knn_preservation", 1), ("distance_mse", -1), ("procrustes_rmsd_scaled", -1),
                       ("morans_i_corr", 1), ("neighborhood_ari", 1), ("joint_consistency_error", -1),
                       ("masked_reconstruction_mse", -1), ("expression_pearson", 1),
                       # descriptions of a placement or a section: neither side is better
                       ("morans_i_mean_pred", None), ("morans_i_mean_true", None), ("joint_coupling", None)):
        assert M.direction(name) == want and direction(name) == want, name
    assert set(M.DIRECTIONS.values()) == {M.HIGHER, M.LOWER, None}


@pytest.mark.parametrize("name", ["mse_corrected", "knn_preservation_error", "Distance_MSE", ""])
def test_an_undeclared_metric_is_a_one_line_error_naming_it_and_where_to_declare_it(name: str) -> None:
    from alphastomics.analysis import verdict
    from alphastomics.analysis.runs import direction

    for call in (M.direction, direction, verdict._word):
        with pytest.raises(M.UndeclaredMetricError) as err:
            call(name)
        text = str(err.value)
        assert "\n" not in text and f"metric '{name}' has no declared direction" in text
        assert "alphastomics/evaluation/metrics.py" in text
        assert isinstance(err.value, AlphaSTomicsError)  # the CLI prints it as one 'error:' line, exit 2


def test_the_claims_expect_the_declared_direction() -> None:
    # the design note's expected changes (claims.EFFECTS: "up", "down" or a % range) are improvements
    from alphastomics.analysis.claims import EFFECTS

    for _, metric, lo, hi, _ in EFFECTS:
        up = lo is None and hi is None or (lo is not None and min(lo, hi) > 0)
        assert M.direction(metric) == (M.HIGHER if up else M.LOWER), metric
