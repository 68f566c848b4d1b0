"""Metrics of DESIGN section 6 as pure functions: numpy arrays in, a float (or a small dict/array) out.

Positions are compared up to rotation, reflection and translation (and, where said, scale), as in the
tissue-reassembly evaluation of LUNA (Yu et al. 2025). Moran's I follows Moran (1950) with k-nearest-neighbour
binary weights, row-standardised. The attention-sink share follows the "attention sink" analysis of Xiao et
al. 2023 and Qiu et al. 2025 (Gated Attention, arXiv 2505.06708): the share of attention mass one key
receives.

Conventions: ``pred`` and ``true`` are (N, D) coordinates of the same N cells in the same order (or (N, G)
expression); every function validates its input and raises ``MetricInputError`` with one line.
"""

from __future__ import annotations

from typing import Any

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
# Pairwise distances


def unit_rms(x: np.ndarray) -> np.ndarray:
    """Centre and scale so that sqrt(mean_i |x_i|^2) = 1 (the cloud's RMS radius)."""
    c = x - x.mean(axis=0)
    r = np.sqrt((c**2).sum(axis=1).mean())
    return c / r if r > 0 else c


def pair_distances(
    pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances of the same cell pairs in both clouds: every pair i < j, or a seeded random subset of
    ``max_pairs`` pairs (i != j, drawn uniformly) when there are more."""
    p, t = _pair(pred, true)
    n = len(p)
    if n * (n - 1) // 2 <= max_pairs:
        return pdist(p), pdist(t)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = (i + rng.integers(1, n, size=max_pairs)) % n  # never i itself
    return np.linalg.norm(p[i] - p[j], axis=1), np.linalg.norm(t[i] - t[j], axis=1)


def distance_mse(pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0) -> float:
    """mean_{i<j} (|p_i - p_j| - |t_i - t_j|)^2 after scaling each cloud to unit RMS radius."""
    p, t = _pair(pred, true)
    dp, dt = pair_distances(unit_rms(p), unit_rms(t), max_pairs=max_pairs, seed=seed)
    return float(np.mean((dp - dt) ** 2))


def distance_pearson(
    pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> float:
    """Pearson r between {|p_i - p_j|} and {|t_i - t_j|} over pairs i < j."""
    dp, dt = pair_distances(pred, true, max_pairs=max_pairs, seed=seed)
    if np.ptp(dp) == 0 or np.ptp(dt) == 0:
        return float("nan")  # all distances equal: correlation undefined
    from scipy import stats  # here, not at the top: training imports this module for diagnostics only

    return float(stats.pearsonr(dp, dt)[0])


def distance_spearman(
    pred: np.ndarray, true: np.ndarray, *, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> float:
    """Spearman rho between {|p_i - p_j|} and {|t_i - t_j|} over pairs i < j."""
    dp, dt = pair_distances(pred, true, max_pairs=max_pairs, seed=seed)
    if np.ptp(dp) == 0 or np.ptp(dt) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.spearmanr(dp, dt)[0])


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
    a, b = knn_indices(p, k), knn_indices(t, k)
    k_eff = a.shape[1]
    overlap = (a[:, :, None] == b[:, None, :]).sum(axis=(1, 2))  # (N,): rows hold distinct indices
    return float(overlap.mean() / k_eff)


# ------------------------------------------------------------------------------------------------------
# Procrustes


def procrustes_align(
    pred: np.ndarray, true: np.ndarray, *, scaled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(aligned pred, centred true): pred centred, rotated/reflected (and, if scaled, scaled by s) to
    minimise |s P R - T|_F; R = U V^T from the SVD P^T T = U S V^T, s = trace(S) / |P|_F^2."""
    p, t = _pair(pred, true)
    p = p - p.mean(axis=0)
    t = t - t.mean(axis=0)
    u, s, vt = np.linalg.svd(p.T @ t)
    aligned = p @ (u @ vt)  # orthogonal: rotation, or rotation + reflection, whichever fits better
    if scaled:
        norm = (p**2).sum()
        aligned = aligned * (s.sum() / norm if norm > 0 else 0.0)
    return aligned, t


def procrustes_rssd(pred: np.ndarray, true: np.ndarray, *, scaled: bool = False) -> float:
    """sqrt(sum_i |a_i - t_i|^2), a = pred after optimal Procrustes alignment (see procrustes_align)."""
    a, t = procrustes_align(pred, true, scaled=scaled)
    return float(np.sqrt(((a - t) ** 2).sum()))


def procrustes_rmsd(pred: np.ndarray, true: np.ndarray, *, scaled: bool = False) -> float:
    """sqrt(mean_i |a_i - t_i|^2) = RSSD / sqrt(N), in the units of ``true``."""
    a, t = procrustes_align(pred, true, scaled=scaled)
    return float(np.sqrt(((a - t) ** 2).sum(axis=1).mean()))


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


def _neighborhood_clusterings(
    pred: np.ndarray, true: np.ndarray, labels: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(clusters in true coords, clusters in pred coords), or None with fewer than 2 cell types."""
    p, t = _pair(pred, true)
    if len(np.unique(labels)) < 2:
        return None
    return neighborhood_clusters(t, labels, k=k, seed=seed), neighborhood_clusters(p, labels, k=k, seed=seed)


def neighborhood_ari(
    pred: np.ndarray, true: np.ndarray, labels: np.ndarray, *, k: int = 15, seed: int = 0
) -> float:
    """ARI(clusters of kNN cell-type composition in pred coords, same in true coords); NaN if < 2 types."""
    from sklearn.metrics import adjusted_rand_score

    pair = _neighborhood_clusterings(pred, true, labels, k, seed)
    return float("nan") if pair is None else float(adjusted_rand_score(*pair))


def neighborhood_nmi(
    pred: np.ndarray, true: np.ndarray, labels: np.ndarray, *, k: int = 15, seed: int = 0
) -> float:
    """NMI (arithmetic mean normalisation) of the same two clusterings as ``neighborhood_ari``."""
    from sklearn.metrics import normalized_mutual_info_score

    pair = _neighborhood_clusterings(pred, true, labels, k, seed)
    return float("nan") if pair is None else float(normalized_mutual_info_score(*pair))


# ------------------------------------------------------------------------------------------------------
# Moran's I


def knn_graph(positions: np.ndarray, k: int) -> sparse.csr_matrix:
    """(N, N) binary kNN adjacency (row i has ones at the k nearest other cells), float64 CSR."""
    idx = knn_indices(positions, k)
    n, kk = idx.shape
    return sparse.csr_matrix((np.ones(n * kk), idx.ravel(), np.arange(0, n * kk + 1, kk)), shape=(n, n))


def morans_i(positions: np.ndarray, values: np.ndarray, *, k: int = 10) -> np.ndarray:
    """(G,) Moran's I per column: I = sum_i z_i (mean_{j in kNN(i)} z_j) / sum_i z_i^2, z = v - mean(v).

    This is N/S0 z'Wz / z'z with binary kNN weights (S0 = N k), the same number as row-standardised weights;
    computed by ``scanpy.metrics.morans_i`` on the kNN graph. NaN for constant columns.
    """
    import scanpy as sc

    x = _points(positions, "positions")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.shape[0] != len(x):
        raise MetricInputError(f"metric input 'values' has {v.shape[0]} rows for {len(x)} positions")
    z = v - v.mean(axis=0)
    denom = (z**2).sum(axis=0)
    constant = denom <= 1e-12 * max(1.0, float(np.abs(v).max(initial=0.0)) ** 2)
    out = np.full(v.shape[1], np.nan)
    if (~constant).any():
        # scanpy wants features in rows; constant columns would divide 0 by 0 inside its numba kernel
        out[~constant] = np.atleast_1d(sc.metrics.morans_i(knn_graph(x, k), np.ascontiguousarray(z[:, ~constant].T)))
    return out


def morans_i_correlation(pred: np.ndarray, true: np.ndarray, values: np.ndarray, *, k: int = 10) -> float:
    """Pearson r across genes between Moran's I of ``values`` on pred coords and on true coords."""
    p, t = _pair(pred, true)
    a, b = morans_i(p, values, k=k), morans_i(t, values, k=k)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.pearsonr(a[ok], b[ok])[0])


# ------------------------------------------------------------------------------------------------------
# Expression


def expression_mse(pred: np.ndarray, true: np.ndarray) -> float:
    """mean_{i,g} (p_ig - t_ig)^2."""
    p, t = _pair(pred, true, min_rows=1)
    return float(np.mean((p - t) ** 2))


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
    """Mean, std and histogram counts (fixed ``bins``) of gate scores of real cells; gate is (B, N, C)."""
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
