"""docs/reassemble.png: a held-out section, true and reassembled from its expression alone, side by side.

The section's cells are handed to the reassemble stage as a lab would hand over dissociated cells (their
log-normalised expression, no coordinates: ``alphastomics.model.reassemble.withheld_section``); the placement it
writes is then rotated/reflected onto the truth (orthogonal Procrustes, no scaling: expression fixes a
tissue only up to those) and both are drawn in the data's units, coloured by cell type or an annotation.
The panel titles give the project's own scores of the placement (kNN preservation, distance Spearman).

    python benchmarks/reassemble_figure.py --checkpoint RUN/train/final.pt --data-dir PROC \\
        [--section NAME] [--color cell_type|ANNOTATION] [--draws 8] --out docs/reassemble.png

The section defaults to the first test section of PROC: use a checkpoint that never trained on it.
Sampling settings are the checkpoint's own unless --config/--set give others (as for the sample stage).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def _colours(data_dir: Path, section: str, adata, color: str) -> np.ndarray:
    """Per-cell labels: the cell type, or an annotation column (``annotation_<name>`` of cells.parquet)."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from alphastomics.artifacts import DataError, read_manifest

    if color == "cell_type":
        return np.array([None if pd.isna(v) else str(v) for v in adata.obs["cell_type"]], dtype=object)
    manifest = read_manifest(data_dir)
    if color not in (manifest.get("annotations") or []):
        raise DataError(f"{data_dir / 'manifest.json'}: no annotation '{color}' (has: "
                        f"{', '.join(manifest.get('annotations') or []) or 'none'}); use --color cell_type")
    t = pq.read_table(data_dir / "cells.parquet", columns=["section", f"annotation_{color}"])
    t = t.filter(pc.equal(t["section"].cast("string"), section))
    return np.asarray(t[f"annotation_{color}"].cast("string").to_pylist(), dtype=object)


def draw(true: np.ndarray, placed: np.ndarray, labels: np.ndarray, title: str, units: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alphastomics.artifacts import atomic_file
    from alphastomics.evaluation import metrics as M

    aligned, _ = M.procrustes_align(placed, true)
    aligned = aligned + true.mean(axis=0)
    knn, rho = M.knn_preservation(placed, true), M.distance_spearman(placed, true)
    names = sorted({str(v) for v in labels if v is not None})
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True)
    for ax, xy, name in ((axes[0], true, "true positions"),
                         (axes[1], aligned, f"reassembled from expression\nkNN preservation {knn:.2f}, "
                                            f"distance Spearman {rho:.2f}")):
        for j, label in enumerate(names):
            rows = np.array([str(v) == label for v in labels])
            ax.scatter(xy[rows, 0], xy[rows, 1], s=6, color=cmap(j % cmap.N), label=label, linewidths=0)
        rest = np.array([v is None for v in labels])
        if rest.any():
            ax.scatter(xy[rest, 0], xy[rest, 1], s=6, color="0.7", linewidths=0)
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlabel(f"x ({units})" if units else "x")
    if names:
        axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=2,
                       frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from alphastomics import AlphaSTomicsError
    from alphastomics.artifacts import read_manifest
    from alphastomics.config import load_config
    from alphastomics.model.reassemble import UNS_KEY, reassemble, withheld_section

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data-dir", required=True, type=Path, help="processed data set holding the section")
    p.add_argument("--section", help="default: the first test section of --data-dir")
    p.add_argument("--color", default="cell_type", help="cell_type, or an annotation of the manifest (layer)")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--config", action="append", default=[],
                   help="sampling settings (default: the checkpoint's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path("docs/reassemble.png"))
    args = p.parse_args(argv)
    try:
        manifest = read_manifest(args.data_dir)
        section = args.section or manifest["splits"]["test"][0]
        cfg = load_config(args.config, args.overrides) if args.config or args.overrides else None
        adata, true = withheld_section(args.data_dir, section)
        labels = _colours(args.data_dir, section, adata, args.color)
        with tempfile.TemporaryDirectory() as tmp:
            cells = Path(tmp) / "cells.h5ad"
            adata.write_h5ad(cells)
            placed = reassemble(args.checkpoint, cells, Path(tmp) / "placed.h5ad", draws=args.draws, cfg=cfg)
        info = placed.uns[UNS_KEY]
        title = (f"{manifest.get('dataset', args.data_dir.name)}, section {section} ({placed.n_obs} cells): "
                 f"{info['variant']}, mean of {args.draws} draws")
        draw(true, placed.obsm["X_spatial_pred"], labels, title,
             str(manifest["coordinates"].get("units") or ""), args.out)
    except AlphaSTomicsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"reassemble_figure: section {section} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
