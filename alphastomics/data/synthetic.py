"""A seeded synthetic layered tissue with known ground truth (tissue-frame coordinates, cell types), and
``random_orthogonal``, the one Haar-uniform random rotation (also the training augmentation's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alphastomics.artifacts import DataError
from alphastomics.config import SyntheticConfig


def random_orthogonal(dims: int, rng: np.random.Generator, reflect: bool) -> np.ndarray:
    """A Haar-uniform random orthogonal D x D matrix (float64): QR of a Gaussian matrix with the sign fix is
    uniform over O(d) (Mezzadri 2007); flipped to SO(d) unless reflections are allowed."""
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    q = q * np.sign(np.diag(r))
    if not reflect and np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def generate_synthetic(scfg: SyntheticConfig) -> Any:
    """AnnData of ``num_sections`` tissue sections: counts in X, obsm['spatial'], obs section/cell_type.

    Each section is an ellipse (2D) or ellipsoid (3D) of random size, rotation and offset. Cell types are
    wavy layers along the tissue's y axis; marker genes rise in one type, gradient genes follow a tissue
    axis, the rest are background; counts are Poisson-gamma (negative binomial, dispersion = ``noise``).
    The tissue-frame coordinates (ground truth before rotation) are kept in ``obsm['tissue_frame']``, each
    section's rotation in ``uns['section_rotation']`` (section -> D x D list).
    """
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(scfg.seed)
    k, g, d = scfg.num_cell_types, scfg.num_genes, scfg.dims
    if k < 1 or g < 2 or scfg.num_sections < 1 or not 2 <= scfg.min_cells <= scfg.max_cells:
        raise DataError("config: dataset.synthetic needs num_cell_types >= 1, num_genes >= 2, num_sections >= 1,"
                        " 2 <= min_cells <= max_cells; fix those values")
    per_type = max(1, g // (3 * k))
    n_marker = min(g, per_type * k)
    n_grad = min(g - n_marker, max(1, g // 4))
    names = [f"marker{j // per_type}_{j % per_type}" for j in range(n_marker)]
    names += [f"grad{j}" for j in range(n_grad)] + [f"gene{j}" for j in range(g - n_marker - n_grad)]
    base = rng.normal(0.0, 0.5, g)
    marker = np.zeros((k, g))
    for j in range(n_marker):
        marker[j // per_type, j] = 2.0
    direction = rng.standard_normal((n_grad, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    amplitude = rng.uniform(1.0, 2.0, n_grad)
    semi_axes = np.array([1.0, 0.6, 0.5][:d])
    xs, frames, sections, types, ids, coords = [], [], [], [], [], []
    rotations: dict[str, np.ndarray] = {}
    for s in range(scfg.num_sections):
        n = int(rng.integers(scfg.min_cells, scfg.max_cells + 1))
        u = rng.standard_normal((n, d))
        u *= (rng.uniform(size=(n, 1)) ** (1.0 / d)) / np.linalg.norm(u, axis=1, keepdims=True)  # uniform ball
        layer = (u[:, 1] + 1.0) / 2.0 * k + 0.25 * k * np.sin(np.pi * u[:, 0]) / 2.0
        t = np.clip(np.floor(layer), 0, k - 1).astype(np.int64)
        log_mu = base + marker[t]
        log_mu[:, n_marker : n_marker + n_grad] += amplitude * (u @ direction.T)
        rate = np.exp(log_mu)
        library = np.exp(rng.normal(np.log(20.0 * g), scfg.noise, (n, 1)))
        rate *= library / rate.sum(axis=1, keepdims=True)
        if scfg.noise > 0:
            rate *= rng.gamma(1.0 / scfg.noise, scfg.noise, rate.shape)
        xs.append(rng.poisson(rate).astype(np.float32))
        size = rng.uniform(0.8, 1.25) * 100.0  # about microns
        frame = u * semi_axes
        rotation = random_orthogonal(d, rng, reflect=False)
        coords.append(frame * size @ rotation.T + rng.uniform(-500, 500, d))
        rotations[f"section{s:02d}"] = rotation
        frames.append(frame)
        sections += [f"section{s:02d}"] * n
        types += [f"type{i}" for i in t]
        ids += [f"s{s:02d}_c{i:05d}" for i in range(n)]
    obs = pd.DataFrame({"section": pd.Categorical(sections), "cell_type": pd.Categorical(types)}, index=ids)
    adata = ad.AnnData(np.concatenate(xs), obs=obs, var=pd.DataFrame(index=names))
    adata.obsm["spatial"] = np.concatenate(coords)
    adata.obsm["tissue_frame"] = np.concatenate(frames)
    # spatial = size * tissue_frame @ R.T + offset per section: R undone, sections share one frame (peers)
    adata.uns["section_rotation"] = {name: r.tolist() for name, r in rotations.items()}
    return adata


def synthetic_rotations(scfg: SyntheticConfig) -> dict[str, np.ndarray]:
    """Section -> the rotation R (D x D) the generator applied: its coordinates are ``frame @ R.T`` plus an
    offset, so ``positions @ R`` puts every section in the one tissue frame (regenerated from the seed)."""
    uns = generate_synthetic(scfg).uns["section_rotation"]
    return {name: np.asarray(r, dtype=np.float64) for name, r in uns.items()}
