"""Write a third-party-style .h5ad: the layout a lab's MERFISH/Xenium export often has, not this project's.

Sparse CSR counts in ``layers["counts"]`` and log-normalised values in ``X``; rows shuffled (the cells of a
section are scattered through the file); coordinates in two obs columns (``center_x``, ``center_y``, microns);
sections in ``obs["slice_id"]``, cell types in ``obs["cell_class"]``. Tissue: each section is a disc of
layered cell types (like cortical layers); each type has marker genes, a few genes follow a spatial
gradient, the rest is sparse background. Seeded, so the file is the same on every machine.

    python benchmarks/make_h5ad.py --out data/lab.h5ad                     # ~1,400 cells x 13,000 genes, 3 sections
    python benchmarks/make_h5ad.py --out big.h5ad --cells 200000 --genes 2000 --sections 10   # the benchmark
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

CHUNK = 20_000  # cells generated at once: memory stays at one dense chunk plus the sparse matrix


def make(cells: int, genes: int, sections: int, types: int = 8, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.3, 0.15, genes)  # mostly near-zero background rates: sparse like real panels
    markers = rng.choice(genes, (types, max(1, min(20, genes // (2 * types)))), replace=False)
    lift = np.zeros((types, genes))
    for t in range(types):
        lift[t, markers[t]] = rng.uniform(2.0, 8.0, markers.shape[1])
    n_grad = max(1, min(50, genes // 50))
    grad = rng.choice(np.setdiff1d(np.arange(genes), markers.ravel()), n_grad, replace=False)
    grad_dir = rng.standard_normal((n_grad, 2))
    grad_dir /= np.linalg.norm(grad_dir, axis=1, keepdims=True)
    section = np.repeat(np.arange(sections), -(-cells // sections))[:cells]
    blocks, xy, kind = [], np.empty((cells, 2)), np.empty(cells, np.int64)
    for start in range(0, cells, CHUNK):
        stop = min(start + CHUNK, cells)
        n = stop - start
        r, phi = np.sqrt(rng.uniform(size=n)), rng.uniform(0, 2 * np.pi, n)
        u = np.c_[r * np.cos(phi), r * np.sin(phi)]  # unit disc
        t = np.clip(((u[:, 1] + 1) / 2 * types + 0.3 * np.sin(3 * u[:, 0])).astype(np.int64), 0, types - 1)
        rate = base + lift[t]
        rate[:, grad] *= np.exp(1.5 * u @ grad_dir.T)
        blocks.append(sparse.csr_matrix(rng.poisson(rate).astype(np.float32)))
        xy[start:stop] = u * 500.0 + 3000.0 * section[start:stop, None]  # microns, sections side by side
        kind[start:stop] = t
    counts = sparse.vstack(blocks, format="csr")
    order = rng.permutation(cells)  # an export sorted by something else than section
    counts = counts[order]
    obs = pd.DataFrame(
        {
            "slice_id": pd.Categorical([f"slice_{s + 1}" for s in section[order]]),
            "cell_class": pd.Categorical([f"L{t + 1}" for t in kind[order]]),
            "center_x": xy[order, 0],
            "center_y": xy[order, 1],
        },
        index=[f"cell-{i:07d}" for i in order],
    )
    var = pd.DataFrame(index=[f"Gene{j:05d}" for j in range(genes)])
    lib = np.asarray(counts.sum(axis=1)).ravel()
    norm = sparse.diags((1e4 / np.maximum(lib, 1)).astype(np.float32)) @ counts
    norm.data = np.log1p(norm.data)
    a = ad.AnnData(X=norm.tocsr(), obs=obs, var=var, layers={"counts": counts})
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cells", type=int, default=1400)
    p.add_argument("--genes", type=int, default=13000)
    p.add_argument("--sections", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    a = make(args.cells, args.genes, args.sections, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(args.out)
    nnz = a.layers["counts"].nnz
    print(f"{args.out}: {a.n_obs} cells x {a.n_vars} genes, {args.sections} sections, "
          f"{nnz / (a.n_obs * a.n_vars):.1%} non-zero")


if __name__ == "__main__":
    main()
