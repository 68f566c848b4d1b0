"""Metrics of DESIGN section 6 as pure functions: numpy arrays in, a float (or a small dict/array) out.

Positions are compared up to rotation, reflection and translation (and, where said, scale), as in the
tissue-reassembly evaluation of LUNA (Yu et al. 2025). Moran's I follows Moran (1950) with k-nearest-neighbour
binary weights, row-standardised. The attention-sink share follows the "attention sink" analysis of Xiao et
al. 2023 and Qiu et al. 2025 (Gated Attention, arXiv 2505.06708): the share of attention mass one key
receives.

Conventions: ``pred`` and ``true`` are (N, D) coordinates of the same N cells in the same order (or (N, G)
expression); every function validates its input and raises ``MetricInputError`` with one line.

``SectionTruth`` holds the true-coordinate side of the distance, kNN and Moran's I metrics of one section,
computed once and shared by every prediction scored against it (each sampling draw, each random
placement); its scores are the same numbers as the functions here (tests/test_metrics.py).
``NeighborhoodTruth`` does the same for the cell-type neighbourhood clustering.

``DIRECTIONS`` declares which way every metric is better (higher, lower, or neither for a description);
``direction`` is what the verdict, the learning gate and the report read, and an undeclared metric is an
error there, never a guess from its name.

Long because every metric is defined here once, with its direction.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from alphastomics import AlphaSTomicsError

# Above this many pairs, distance metrics use a seeded random subset of pairs: pdist of N cells needs
# N(N-1)/2 doubles (20,000 cells -> 1.6 GB); 2e6 pairs keeps the estimate's error far below seed noise.
MAX_PAIRS = 2_000_000
# Fixed bins for gate histograms so that histograms of different runs and layers add and compare.
GATE_BINS = np.linspace(0.0, 1.0, 11)
# Gate scores below this count as "closed". Qiu et al. ("Gated Attention for Large Language Models", NeurIPS
# 2025) find the query-dependent sigmoid gate at the G1 position sparse: mean score about 0.1, most scores
# near 0 (their gate-score histograms); the design note instead calls mean ~0.5, std ~0.2 healthy. The share
# below SPARSE_GATE says which of the two a trained gate looks like.
SPARSE_GATE = 0.1


class MetricInputError(AlphaSTomicsError, ValueError):
    """Arrays handed to a metric have the wrong shape or non-finite values."""


def _points(x: Any, name: str, min_rows: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise MetricInputError(
            f"metric input '{name}' must be a 2-D array (cells x dims), got shape {a.shape}"
        )
    if a.shape[0] < min_rows:
        raise MetricInputError(
            f"metric input '{name}' has {a.shape[0]} cells; at least {min_rows} are needed"
        )
    if not np.isfinite(a).all():
        raise MetricInputError(f"metric input '{name}' has NaN or inf values; drop or fix those cells first")
    return a


def _pair(pred: Any, true: Any, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    p, t = _points(pred, "pred", min_rows), _points(true, "true", min_rows)
    if p.shape != t.shape:
        raise MetricInputError(
            f"metric inputs 'pred' {p.shape} and 'true' {t.shape} must have the same shape"
        )
    return p, t


# ------------------------------------------------------------------------------------------------------
# Directions: which way every metric is better, declared once

HIGHER, LOWER = 1, -1
# Every key evaluate writes to metrics.json ("overall", per section, per draw) and every other number the
# verdict compares (stability's convergence), with its direction: HIGHER (higher is better), LOWER (lower is
# better), or None: a description of a placement or of the section, not a score (neither side is better; the
# verdict gives it no word and the learning gate no skill). The verdict, the learning gate, the claims and the
# report read only this table (``direction``); a metric missing here is an error, never a guess from its name.
DIRECTIONS: dict[str, Literal[1, -1] | None] = {
    # positions (expr_to_pos): pair distances, neighbours, alignment
    "distance_mse": LOWER,
    "distance_pearson": HIGHER,
    "distance_spearman": HIGHER,
    "knn_preservation": HIGHER,
    "procrustes_rmsd": LOWER,
    "procrustes_rssd": LOWER,
    "procrustes_rmsd_scaled": LOWER,
    "procrustes_rssd_scaled": LOWER,
    # Moran's I of the true expression on the predicted vs the true positions
    "morans_i_corr": HIGHER,
    "morans_i_mean_pred": None,
    "morans_i_mean_true": None,
    # cell-type neighbourhoods (data sets with cell types)
    "neighborhood_ari": HIGHER,
    "neighborhood_nmi": HIGHER,
    # expression (pos_to_expr), standardised units; Moran's I of predicted vs true expression
    "expression_mse": LOWER,
    "expression_pearson": HIGHER,
    "expr_morans_i_corr": HIGHER,
    "expr_morans_i_mean_pred": None,
    "expr_morans_i_mean_true": None,
    # joint mode: coupling of generated positions and expression against the real section's
    "joint_coupling": None,
    "joint_coupling_true": None,
    "joint_consistency_error": LOWER,
    # the model's masked-expression reconstruction (evaluate with --checkpoint: diagnostics)
    "masked_reconstruction_mse": LOWER,
    # training convergence, paired by the learning-rate sweep (analysis/stability.py)
    "steps_to_plateau": LOWER,
    "steps_to_common": LOWER,
}


class UndeclaredMetricError(AlphaSTomicsError, ValueError):
    """A metric without a declared direction (``DIRECTIONS``)."""


def direction(metric: str) -> Literal[1, -1] | None:
    """+1 if higher is better, -1 if lower is better, None for a description (``DIRECTIONS``); a metric not
    declared there raises ``UndeclaredMetricError`` (one line)."""
    try:
        return DIRECTIONS[metric]
    except KeyError:
        raise UndeclaredMetricError(
            f"metric '{metric}' has no declared direction; declare it (HIGHER, LOWER or None) in DIRECTIONS "
            "of alphastomics/evaluation/metrics.py"
        ) from None


# ------------------------------------------------------------------------------------------------------
# Pairwise distances


def _centred(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(x - mean, RMS radius sqrt(mean_i |x_i - mean|^2))."""
    c = x - x.mean(axis=0)
    return c, float(np.sqrt((c**2).sum(axis=1).mean()))


def unit_rms(x: np.ndarray) -> np.ndarray:
    """Centre and scale so that sqrt(mean_i |x_i|^2) = 1 (the cloud's RMS radius)."""
    c, r = _centred(x)
    return c / r if r > 0 else c


_PairIndex = tuple[np.ndarray, np.ndarray] | None


def _pair_index(n: int, max_pairs: int, seed: int) -> _PairIndex:
    """The pairs the distance metrics compare among n cells: None for every pair i < j (``pdist`` order),
    else (i, j) of a seeded random subset of ``max_pairs`` pairs (i != j, drawn uniformly). It depends on n
    and the seed only, so one draw serves every prediction of a section."""
    if n * (n - 1) // 2 <= max_pairs:
        return None
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = (i + rng.integers(1, n, size=max_pairs)) % n  # never i itself
    return i, j


def _distances(x: np.ndarray, pairs: _PairIndex) -> np.ndarray:
    return pdist(x) if pairs is None else np.linalg.norm(x[pairs[0]] - x[pairs[1]], axis=1)


def pair_distances(
    pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances of the same cell pairs in both clouds: every pair i < j, or a seeded random subset of
    ``max_pairs`` pairs (i != j, drawn uniformly) when there are more."""
    p, t = _pair(pred, true)
    pairs = _pair_index(len(p), max_pairs, seed)
    return _distances(p, pairs), _distances(t, pairs)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(x)`` (ties get their average rank) of a finite 1-D array, in one argsort and
    one scatter: half the time of scipy's general version on millions of pair distances. Average ranks
    are half-integers, exact in float64, so the bits are scipy's (tests/test_metrics.py)."""
    order = np.argsort(x)
    xs = x[order]
    start = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # sorted position of each distinct value
    end = np.r_[start[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((start + end + 1) / 2, end - start)
    return ranks


def _distance_mse(dp: np.ndarray, rp: float, dt: np.ndarray, rt: float) -> float:
    """``distance_mse`` from unscaled pair distances and RMS radii: a distance in the cloud centred and
    scaled to unit RMS radius (``unit_rms``) is the unscaled distance / radius, up to the rounding of the
    centring (~1e-16 relative), so one set of distances serves the MSE and both correlations."""
    dp = dp / rp if rp > 0 else dp
    dt = dt / rt if rt > 0 else dt
    return float(np.mean((dp - dt) ** 2))


def _distance_pearson(dp: np.ndarray, dt: np.ndarray, flat: bool) -> float:
    if flat:
        return float("nan")  # all distances equal: correlation undefined
    from scipy import stats  # here, not at the top: training imports this module for diagnostics only

    return float(stats.pearsonr(dp, dt)[0])


def _distance_spearman(dp: np.ndarray, rank_t: np.ndarray | None, flat: bool) -> float:
    """Pearson r of average ranks, the arithmetic of ``scipy.stats.spearmanr`` (its ``np.corrcoef`` on the
    ranks stacked as columns, entry [1, 0]), so the bits are the same."""
    if flat:
        return float("nan")
    return float(np.corrcoef(np.column_stack((_average_ranks(dp), rank_t)), rowvar=False)[1, 0])


def _flat(d: np.ndarray) -> bool:
    return bool(np.ptp(d) == 0)


def distance_mse(pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0) -> float:
    """mean_{i<j} (|p_i - p_j| - |t_i - t_j|)^2 after scaling each cloud to unit RMS radius."""
    p, t = _pair(pred, true)
    dp, dt = pair_distances(p, t, max_pairs=max_pairs, seed=seed)
    return _distance_mse(dp, _centred(p)[1], dt, _centred(t)[1])


def distance_pearson(
    pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> float:
    """Pearson r between {|p_i - p_j|} and {|t_i - t_j|} over pairs i < j."""
    dp, dt = pair_distances(pred, true, max_pairs=max_pairs, seed=seed)
    return _distance_pearson(dp, dt, _flat(dp) or _flat(dt))


def distance_spearman(
    pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> float:
    """Spearman rho between {|p_i - p_j|} and {|t_i - t_j|} over pairs i < j."""
    dp, dt = pair_distances(pred, true, max_pairs=max_pairs, seed=seed)
    flat = _flat(dp) or _flat(dt)
    return _distance_spearman(dp, None if flat else _average_ranks(dt), flat)


# ------------------------------------------------------------------------------------------------------
# Neighbourhoods


def knn_indices(x: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each cell's k nearest other cells (self excluded, even among duplicate points)."""
    x = _points(x, "positions")
    n = len(x)
    k = min(k, n - 1)
    _, idx = cKDTree(x).query(x, k=k + 1)
    idx = np.asarray(idx, dtype=np.int64).reshape(n, k + 1)
    keep = idx != np.arange(n)[:, None]
    # Self is among the k+1 (usually first); where a duplicate point displaced it, drop the farthest instead.
    keep[keep.all(axis=1), -1] = False
    return idx[keep].reshape(n, k)


def knn_preservation(pred: np.ndarray, true: np.ndarray, *, k: int = 10) -> float:
    """mean_i |kNN_true(i) ∩ kNN_pred(i)| / k, self excluded (k capped at N - 1)."""
    p, t = _pair(pred, true)
    return _knn_overlap(knn_indices(p, k), knn_indices(t, k))


def _knn_overlap(a: np.ndarray, b: np.ndarray) -> float:
    overlap = (a[:, :, None] == b[:, None, :]).sum(axis=(1, 2))  # (N,): rows hold distinct indices
    return float(overlap.mean() / a.shape[1])


# ------------------------------------------------------------------------------------------------------
# Procrustes


def _procrustes(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(pred centred and rotated/reflected, centred true, the scale s of the scaled fit): one SVD serves the
    alignment with and without scale."""
    p, t = _pair(pred, true)
    p = p - p.mean(axis=0)
    t = t - t.mean(axis=0)
    u, s, vt = np.linalg.svd(p.T @ t)
    aligned = p @ (u @ vt)  # orthogonal: rotation, or rotation + reflection, whichever fits better
    norm = (p**2).sum()
    return aligned, t, (s.sum() / norm if norm > 0 else 0.0)


def procrustes_align(
    pred: np.ndarray, true: np.ndarray, *, scaled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(aligned pred, centred true): pred centred, rotated/reflected (and, if scaled, scaled by s) to
    minimise |s P R - T|_F; R = U V^T from the SVD P^T T = U S V^T, s = trace(S) / |P|_F^2."""
    aligned, t, scale = _procrustes(pred, true)
    return (aligned * scale if scaled else aligned), t


def _rssd(a: np.ndarray, t: np.ndarray) -> float:
    return float(np.sqrt(((a - t) ** 2).sum()))


def _rmsd(a: np.ndarray, t: np.ndarray) -> float:
    return float(np.sqrt(((a - t) ** 2).sum(axis=1).mean()))


def procrustes_rssd(pred: np.ndarray, true: np.ndarray, *, scaled: bool = False) -> float:
    """sqrt(sum_i |a_i - t_i|^2), a = pred after optimal Procrustes alignment (see procrustes_align)."""
    return _rssd(*procrustes_align(pred, true, scaled=scaled))


def procrustes_rmsd(pred: np.ndarray, true: np.ndarray, *, scaled: bool = False) -> float:
    """sqrt(mean_i |a_i - t_i|^2) = RSSD / sqrt(N), in the units of ``true``."""
    return _rmsd(*procrustes_align(pred, true, scaled=scaled))


def procrustes_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """procrustes_rmsd, procrustes_rssd and both ``_scaled``: the numbers of the functions above, from one
    alignment (one SVD)."""
    aligned, t, scale = _procrustes(pred, true)
    a_scaled = aligned * scale
    return {
        "procrustes_rmsd": _rmsd(aligned, t),
        "procrustes_rssd": _rssd(aligned, t),
        "procrustes_rmsd_scaled": _rmsd(a_scaled, t),
        "procrustes_rssd_scaled": _rssd(a_scaled, t),
    }


# ------------------------------------------------------------------------------------------------------
# Random-placement reference


def random_placement(true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of the true positions: the right tissue shape and density, cells in random places.

    Chosen over uniform points in the bounding box because it keeps the cloud itself (a blastoderm shell is
    not its box), so distance and Procrustes metrics of the reference measure assignment alone.
    """
    t = np.asarray(true)
    return t[rng.permutation(len(t))]


# ------------------------------------------------------------------------------------------------------
# Cell-type neighbourhoods


def neighborhood_composition(positions: np.ndarray, labels: np.ndarray, *, k: int = 15) -> np.ndarray:
    """(N, C) fraction of each label among a cell's k nearest other cells; C = number of distinct labels."""
    labels = np.asarray(labels)
    _, codes = np.unique(labels, return_inverse=True)
    idx = knn_indices(positions, k)
    n_types = codes.max() + 1
    comp = np.zeros((len(codes), n_types))
    np.add.at(comp, (np.repeat(np.arange(len(codes)), idx.shape[1]), codes[idx].ravel()), 1.0)
    return comp / idx.shape[1]


def neighborhood_clusters(
    positions: np.ndarray, labels: np.ndarray, *, k: int = 15, seed: int = 0
) -> np.ndarray:
    """KMeans (seeded, n_init 10, k = number of distinct labels) of cells by neighbourhood composition."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    comp = neighborhood_composition(positions, labels, k=k)
    n_clusters = min(len(np.unique(labels)), len(comp))
    # One thread: for sections of a few thousand cells OpenMP start-up costs more than the clustering
    # (10x on a busy 2-core machine), and the result must not depend on the core count.
    with threadpool_limits(1):
        return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(comp)


def neighborhood_agreement(true_clusters: np.ndarray, pred_clusters: np.ndarray) -> dict[str, float]:
    """neighborhood_ari and neighborhood_nmi of two clusterings of the same cells (``neighborhood_clusters``
    in true and in predicted coordinates): the one place both are computed."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "neighborhood_ari": float(adjusted_rand_score(true_clusters, pred_clusters)),
        "neighborhood_nmi": float(normalized_mutual_info_score(true_clusters, pred_clusters)),
    }


@dataclass(frozen=True, eq=False)
class NeighborhoodTruth:
    """The true-coordinate side of neighborhood_ari/nmi of one section's labelled cells: their clustering in
    true coordinates, fitted once (on first use) and shared by every placement scored against it (each
    sampling draw, each random placement). ``scores`` are the numbers of ``neighborhood_ari``/``_nmi``; NaN
    with fewer than 2 cell types. Frozen; the arrays are shared, not copied: treat them as read-only."""

    true: np.ndarray
    labels: np.ndarray
    _: KW_ONLY
    k: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "true", _points(self.true, "true"))
        object.__setattr__(self, "labels", np.asarray(self.labels))

    @cached_property
    def clusters(self) -> np.ndarray | None:
        """Clusters in true coordinates; None with fewer than 2 cell types (nothing to compare)."""
        if len(np.unique(self.labels)) < 2:
            return None
        return neighborhood_clusters(self.true, self.labels, k=self.k, seed=self.seed)

    def scores(self, pred: np.ndarray) -> dict[str, float]:
        """neighborhood_ari and neighborhood_nmi of one placement of the section's labelled cells."""
        p = _pair(pred, self.true)[0]
        if self.clusters is None:
            return {"neighborhood_ari": float("nan"), "neighborhood_nmi": float("nan")}
        pred_clusters = neighborhood_clusters(p, self.labels, k=self.k, seed=self.seed)
        return neighborhood_agreement(self.clusters, pred_clusters)


def neighborhood_ari(
    pred: np.ndarray, true: np.ndarray, labels: np.ndarray, *, k: int = 15, seed: int = 0
) -> float:
    """ARI(clusters of kNN cell-type composition in pred coords, same in true coords); NaN if < 2 types."""
    return NeighborhoodTruth(true, labels, k=k, seed=seed).scores(pred)["neighborhood_ari"]


def neighborhood_nmi(
    pred: np.ndarray, true: np.ndarray, labels: np.ndarray, *, k: int = 15, seed: int = 0
) -> float:
    """NMI (arithmetic mean normalisation) of the same two clusterings as ``neighborhood_ari``."""
    return NeighborhoodTruth(true, labels, k=k, seed=seed).scores(pred)["neighborhood_nmi"]


# ------------------------------------------------------------------------------------------------------
# Moran's I


def knn_graph(positions: np.ndarray, k: int) -> sparse.csr_matrix:
    """(N, N) binary kNN adjacency (row i has ones at the k nearest other cells), float64 CSR."""
    return _knn_graph(knn_indices(positions, k))


def _knn_graph(idx: np.ndarray) -> sparse.csr_matrix:
    n, kk = idx.shape
    return sparse.csr_matrix((np.ones(n * kk), idx.ravel(), np.arange(0, n * kk + 1, kk)), shape=(n, n))


def morans_i(positions: np.ndarray, values: np.ndarray, *, k: int = 10) -> np.ndarray:
    """(G,) Moran's I per column: I = sum_i z_i (mean_{j in kNN(i)} z_j) / sum_i z_i^2, z = v - mean(v).

    This is N/S0 z'Wz / z'z with binary kNN weights (S0 = N k), the same number as row-standardised weights
    and as ``scanpy.metrics.morans_i`` on the kNN graph (a test holds them equal). It is written here, two
    sparse products, because importing scanpy costs an evaluation job 2-3 s, longer than the statistic
    itself. NaN for constant columns.
    """
    x = _points(positions, "positions")
    return morans_i_knn(knn_indices(x, k), values)


def morans_i_knn(idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``morans_i`` on the kNN indices ``idx`` (N, k) of the positions (``knn_indices``), for a caller that
    has them already (kNN preservation needs the same sets)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.shape[0] != len(idx):
        raise MetricInputError(f"metric input 'values' has {v.shape[0]} rows for {len(idx)} positions")
    z = v - v.mean(axis=0)
    denom = (z**2).sum(axis=0)
    constant = denom <= 1e-12 * max(1.0, float(np.abs(v).max(initial=0.0)) ** 2)
    out = np.full(v.shape[1], np.nan)
    if (~constant).any():
        zc = z[:, ~constant]
        lagged = _knn_graph(idx) @ zc  # sum over each cell's k neighbours
        out[~constant] = (zc * lagged).sum(axis=0) / (idx.shape[1] * denom[~constant])
    return out


def morans_i_correlation(pred: np.ndarray, true: np.ndarray, values: np.ndarray, *, k: int = 10) -> float:
    """Pearson r across genes between Moran's I of ``values`` on pred coords and on true coords."""
    p, t = _pair(pred, true)
    return morans_i_agreement(morans_i(p, values, k=k), morans_i(t, values, k=k))


def morans_i_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r across genes of two Moran's I vectors (``morans_i_correlation`` once both are computed),
    over genes finite in both; NaN with fewer than 2 such genes or a constant vector."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.pearsonr(a[ok], b[ok])[0])


def morans_i_mean(a: np.ndarray) -> float:
    """The mean over genes of a Moran's I vector, over its finite entries; NaN when none is finite."""
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def morans_i_scores(pred: np.ndarray, true: np.ndarray, prefix: str = "") -> dict[str, float]:
    """``{prefix}morans_i_corr`` (``morans_i_agreement``), ``{prefix}morans_i_mean_pred`` and
    ``{prefix}morans_i_mean_true`` (``morans_i_mean``) of two Moran's I vectors already computed."""
    return {
        f"{prefix}morans_i_corr": morans_i_agreement(pred, true),
        f"{prefix}morans_i_mean_pred": morans_i_mean(pred),
        f"{prefix}morans_i_mean_true": morans_i_mean(true),
    }


# ------------------------------------------------------------------------------------------------------
# One section's truth, computed once


@dataclass(frozen=True, eq=False)
class SectionTruth:
    """The true-coordinate side of the distance, kNN and Moran's I metrics of one section.

    A section's model placement, each of its sampling draws and each random-placement reference are all
    scored against the same true coordinates, so their pair distances (the pairs depend on N and the seed
    only), the ranks of those distances, the RMS radius, the kNN sets and Moran's I of the true expression
    are computed once here, each on first use (an expression-only mode never ranks distances). Its scores
    are, bit for bit, those of ``distance_mse``/``_pearson``/``_spearman``, ``knn_preservation`` and
    ``morans_i`` with the same ``k``, ``seed`` and ``max_pairs``. ``values`` (N, G) is the expression whose
    Moran's I ``morans`` holds (optional). Frozen, so a cached quantity cannot go stale; the arrays are
    shared, not copied: treat them as read-only.
    """

    true: np.ndarray
    values: np.ndarray | None = None
    _: KW_ONLY
    k: int = 10
    seed: int = 0
    max_pairs: int = MAX_PAIRS

    def __post_init__(self) -> None:
        object.__setattr__(self, "true", _points(self.true, "true"))
        if self.values is not None:
            object.__setattr__(self, "values", np.asarray(self.values, dtype=np.float64))

    @cached_property
    def pairs(self) -> _PairIndex:
        return _pair_index(len(self.true), self.max_pairs, self.seed)

    @cached_property
    def distances(self) -> np.ndarray:
        return _distances(self.true, self.pairs)

    @cached_property
    def flat(self) -> bool:
        """All true pair distances equal: the distance correlations are undefined (NaN)."""
        return _flat(self.distances)

    @cached_property
    def radius(self) -> float:
        return _centred(self.true)[1]

    @cached_property
    def ranks(self) -> np.ndarray:
        return _average_ranks(self.distances)

    @cached_property
    def knn(self) -> np.ndarray:
        return knn_indices(self.true, self.k)

    def neighbours(self, pred: np.ndarray) -> np.ndarray:
        """``knn_indices(pred, k)``: a placement's kNN sets, which its kNN preservation and its Moran's I
        (``morans_i_knn``) share."""
        return knn_indices(self._pred(pred), self.k)

    @cached_property
    def morans(self) -> np.ndarray:
        if self.values is None:
            raise MetricInputError("SectionTruth has no 'values': pass the expression to take Moran's I of")
        return self.morans_i(self.values)

    def _pred(self, pred: np.ndarray) -> np.ndarray:
        return _pair(pred, self.true)[0]

    def distance_scores(self, pred: np.ndarray) -> dict[str, float]:
        """distance_mse, distance_pearson and distance_spearman of ``pred``, from one set of its distances."""
        p = self._pred(pred)
        dp = _distances(p, self.pairs)
        flat = _flat(dp) or self.flat
        return {
            "distance_mse": _distance_mse(dp, _centred(p)[1], self.distances, self.radius),
            "distance_pearson": _distance_pearson(dp, self.distances, flat),
            "distance_spearman": _distance_spearman(dp, None if flat else self.ranks, flat),
        }

    def knn_preservation(self, pred: np.ndarray, *, neighbours: np.ndarray | None = None) -> float:
        """``knn_preservation(pred, true, k=k)``; ``neighbours``: ``self.neighbours(pred)`` if at hand."""
        return _knn_overlap(self.neighbours(pred) if neighbours is None else neighbours, self.knn)

    def morans_i(self, values: np.ndarray) -> np.ndarray:
        """``morans_i(true, values, k=k)``: Moran's I of any (N, G) values on the true coordinates."""
        return morans_i_knn(self.knn, values)


# ------------------------------------------------------------------------------------------------------
# Expression


def expression_mse(pred: np.ndarray, true: np.ndarray) -> float:
    """mean_{i,g} (p_ig - t_ig)^2."""
    p, t = _pair(pred, true, min_rows=1)
    return float(np.mean((p - t) ** 2))


def _distances_chunked(x: np.ndarray, pairs: _PairIndex, chunk: int = 200_000) -> np.ndarray:
    """``_distances`` for many dimensions (expression): the subset's differences a chunk at a time, so 2 M
    pairs of 250 genes never sit in memory at once."""
    if pairs is None:
        return pdist(x)
    i, j = pairs
    return np.concatenate([np.linalg.norm(x[i[a:a + chunk]] - x[j[a:a + chunk]], axis=1)
                           for a in range(0, len(i), chunk)])


def expression_position_coupling(
    positions: np.ndarray, expression: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> float:
    """Spearman rho, over cell pairs, between the distance of two cells in space and their distance in
    expression (Euclidean, standardised units): how much closer in expression cells close in space are. The
    pairs are those of the distance metrics (every pair, or a seeded subset of ``max_pairs``); NaN when
    either set of distances is constant. Frame-free: rotation, reflection, translation and scale of the
    positions leave it unchanged, and it needs no cell to be matched to a true cell."""
    pos = _points(positions, "positions")
    expr = _points(expression, "expression")
    if len(pos) != len(expr):
        raise MetricInputError(
            f"metric inputs 'positions' and 'expression' have {len(pos)} and {len(expr)} cells; they must "
            "describe the same cells"
        )
    pairs = _pair_index(len(pos), max_pairs, seed)
    dp, de = _distances(pos, pairs), _distances_chunked(expr, pairs)
    if _flat(dp) or _flat(de):
        return float("nan")
    return float(np.corrcoef(_average_ranks(dp), _average_ranks(de))[0, 1])


def joint_consistency(
    pos_pred: np.ndarray, expr_pred: np.ndarray, pos_true: np.ndarray, expr_true: np.ndarray, *,
    max_pairs: int = MAX_PAIRS, seed: int = 0,
) -> dict[str, float]:
    """Expression-position consistency of a generated tissue (``joint`` mode): the coupling of its generated
    positions with its generated expression against the same coupling in the real section.

    ``joint_coupling`` = expression_position_coupling(generated), ``joint_coupling_true`` = the same on the
    true positions and expression, ``joint_consistency_error`` = |generated - true|: 0 when the generated
    cells are as much alike in expression as their generated neighbourhoods say the real ones are; a model
    that draws positions and expression independently gets coupling ~0 and an error of ~|true coupling|."""
    gen = expression_position_coupling(pos_pred, expr_pred, max_pairs=max_pairs, seed=seed)
    true = expression_position_coupling(pos_true, expr_true, max_pairs=max_pairs, seed=seed)
    return {"joint_coupling": gen, "joint_coupling_true": true, "joint_consistency_error": abs(gen - true)}


def expression_pearson(pred: np.ndarray, true: np.ndarray) -> float:
    """mean over genes g with var(t_g) > 0 of Pearson r(p_g, t_g) across cells; a constant p_g counts as 0."""
    p, t = _pair(pred, true)
    pc, tc = p - p.mean(axis=0), t - t.mean(axis=0)
    sp, st = np.sqrt((pc**2).sum(axis=0)), np.sqrt((tc**2).sum(axis=0))
    keep = st > 0
    if not keep.any():
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=0) / (sp * st)
    r = np.where(sp > 0, r, 0.0)  # a prediction that does not vary explains nothing
    return float(np.clip(r[keep], -1.0, 1.0).mean())


# ------------------------------------------------------------------------------------------------------
# Model diagnostics


def attention_sink(attn: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per (batch, head): share = max_j sum_i a_ij / n (mass received by the most-attended cell) and argmax j.

    ``attn`` is (B, H, N, N) (rows = queries, each summing to 1 over real keys) or (H, N, N); only real
    queries (mask True) count, so n is the number of real cells. share = 1/n is uniform, 1 is a full sink.
    Returns {"share": (B, H), "index": (B, H), "n": (B,)}.
    """
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise MetricInputError(f"metric input 'attn' must be (B, H, N, N), got shape {a.shape}")
    b, _, n, _ = a.shape
    m = np.ones((b, n), dtype=bool) if mask is None else np.asarray(mask, dtype=bool).reshape(b, n)
    col = (a * m[:, None, :, None]).sum(axis=2)  # (B, H, N): mass each key receives from real queries
    col = np.where(m[:, None, :], col, -np.inf)  # a padding key can never be the sink
    n_real = m.sum(axis=1)
    return {"share": col.max(axis=2) / n_real[:, None], "index": col.argmax(axis=2), "n": n_real}


def gate_stats(
    gate: np.ndarray, mask: np.ndarray | None = None, *, bins: np.ndarray = GATE_BINS
) -> dict[str, Any]:
    """Mean, std, histogram counts (fixed ``bins``) and ``share_below`` (the share of scores < SPARSE_GATE,
    the paper's sparse gate) of gate scores of real cells; gate is (B, N, C)."""
    g = np.asarray(gate, dtype=np.float64)
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3:
        raise MetricInputError(f"metric input 'gate' must be (B, N, H or D), got shape {g.shape}")
    m = (
        np.ones(g.shape[:2], dtype=bool)
        if mask is None
        else np.asarray(mask, dtype=bool).reshape(g.shape[:2])
    )
    vals = g[m].ravel()
    counts, _ = np.histogram(vals, bins=bins)
    return {
        "mean": float(vals.mean()) if vals.size else float("nan"),
        "std": float(vals.std()) if vals.size else float("nan"),
        "bins": [round(float(x), 9) for x in bins],  # 0.30000000000000004 -> 0.3 in the JSON
        "counts": [int(c) for c in counts],
        "share_below": float((vals < SPARSE_GATE).mean()) if vals.size else float("nan"),
    }


# ------------------------------------------------------------------------------------------------------
# Aggregation


def weighted_mean(values: list[float] | np.ndarray, weights: list[float] | np.ndarray) -> float:
    """sum_s w_s v_s / sum_s w_s over finite v_s (cell counts as weights); NaN if none is finite."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(v) & (w > 0)
    if not ok.any():
        return float("nan")
    return float((v[ok] * w[ok]).sum() / w[ok].sum())
