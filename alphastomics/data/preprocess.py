"""The ``preprocess`` stage: raw sections -> ``cells.parquet`` + ``manifest.json`` (docs/architecture.md).

Expression: counts (all values integers >= 0) are library-size normalised to ``target_sum`` and log1p'd
(``scanpy.pp.normalize_total`` + ``log1p``); per-cell scaled values (MERFISH counts per cell volume) are
log1p'd; already-normalised values are kept (``normalization.detect_input``); genes are selected (a gene
list, or ``scanpy.pp.highly_variable_genes`` on training sections when there are more than
``n_top_genes``); then every kept gene is standardised with mean/std from **training sections only**, so
nothing about held-out sections leaks into the model. Coordinates are centred per section and divided by
one global scale (RMS radius of the training cells), which keeps aspect ratios and maps back to the
original units.

Memory: the data are streamed section by section (validate/detect, gene selection, training statistics,
write), each pass holding one section's dense matrix, normalised in place; a sparse input matrix stays in
memory as CSR (raw.py), a dense one on disk; the training cells for gene selection are held sparse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alphastomics import __version__
from alphastomics.artifacts import FORMAT, DataError, atomic_dir, cells_schema, gene_std_floored
from alphastomics.config import DatasetConfig, to_dict
from alphastomics.data.normalization import detect_input, normalise
from alphastomics.data.raw import RawData, from_anndata, open_raw
from alphastomics.data.splits import split_sections, validation_cells

SPLITS = ("train", "val", "test")


def select_hvg(raw: RawData, train: list[int], applied: str, target_sum: float, n_top: int) -> np.ndarray:
    """Column indices (in file order) of the ``n_top`` highly variable genes of the **training** sections,
    by ``scanpy.pp.highly_variable_genes`` (flavor "seurat": dispersion of log-normalised values, z-scored
    within mean bins). Held-out sections are never read here, so the selection leaks nothing of them."""
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    # Sparse: training cells x all genes (e.g. 13,000) would not fit densely on a large data set.
    blocks = [sparse.csr_matrix(normalise(raw.sections[i].load(), applied, target_sum, None)) for i in train]
    a = ad.AnnData(sparse.vstack(blocks, format="csr"))
    del blocks
    a.var_names = raw.genes
    sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat", subset=False)
    return np.flatnonzero(a.var["highly_variable"].to_numpy())


def _training_moments(raw: RawData, train: list[int], applied: str, target_sum: float) -> tuple[int, np.ndarray, np.ndarray]:
    """Pass 2: (training cells, per-gene mean, std) of the normalised training sections (Chan et al. pairwise
    merge of per-section moments); a gene constant over them gets std 1."""
    secs, g = raw.sections, len(raw.kept_genes)
    n_tot, mean, m2 = 0, np.zeros(g), np.zeros(g)
    for i in train:
        x = normalise(secs[i].load(), applied, target_sum, raw.keep)
        n_b, mean_b = len(x), x.mean(axis=0, dtype=np.float64)
        m2_b = ((x - mean_b.astype(np.float32)) ** 2).sum(axis=0, dtype=np.float64)
        delta = mean_b - mean
        mean = mean + delta * n_b / (n_tot + n_b)
        m2 = m2 + m2_b + delta**2 * n_tot * n_b / (n_tot + n_b)
        n_tot += n_b
        del x
    std = np.sqrt(m2 / n_tot)
    return n_tot, mean, gene_std_floored(std)


def _write_cells(path: Path, raw: RawData, dcfg: DatasetConfig, split: dict[str, str], applied: str,
                 mean: np.ndarray, std: np.ndarray, centers: dict[str, np.ndarray], scale: float,
                 cell_types: list[str], prefix_ids: bool, val_rows: dict[str, np.ndarray] | None = None) -> None:
    """cells.parquet (docs/architecture.md, "Processed data"): each section normalised, standardised with the
    training statistics, centred and scaled, written as one row group."""
    secs, genes, dims = raw.sections, raw.kept_genes, raw.dims
    levels = annotation_levels(raw)
    schema = cells_schema(genes, to_dict(dcfg), list(levels))
    section_dict = pa.array([s.name for s in secs], pa.string())
    split_dict = pa.array(list(SPLITS), pa.string())
    type_dict = pa.array(cell_types, pa.string())
    type_code = {t: i for i, t in enumerate(cell_types)}
    mean32, inv_std32 = mean.astype(np.float32), (1.0 / std).astype(np.float32)

    # Normalise + standardise in place, one row group per section.
    # Dictionary encoding only where it pays (labels): tried on millions of float values it costs ~6x
    # the write time for nothing; byte-stream-split makes float32 compress better under zstd.
    with pq.ParquetWriter(path, schema, compression="zstd",
                          use_dictionary=["section", "split", "cell_type",
                                          *(f"annotation_{a}" for a in levels)],
                          use_byte_stream_split=["x", "y", "z", "expression.list.element"]) as writer:
        for i, s in enumerate(secs):
            x = normalise(s.load(), applied, dcfg.target_sum, raw.keep)
            x -= mean32
            x *= inv_std32
            n = s.n_cells
            pos = ((s.coords - centers[s.name]) / scale).astype(np.float32)
            z = pos[:, 2] if dims == 3 else np.zeros(n, np.float32)
            if s.cell_types is None:
                ct = pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), type_dict)
            else:
                codes = pa.array([type_code.get(t) for t in s.cell_types], pa.int32())
                ct = pa.DictionaryArray.from_arrays(codes, type_dict)
            ids = [f"{s.name}:{c}" for c in s.cell_ids] if prefix_ids else list(s.cell_ids)
            table = pa.table(
                [
                    pa.array(ids, pa.string()),
                    pa.DictionaryArray.from_arrays(pa.array(np.full(n, i, np.int32)), section_dict),
                    pa.DictionaryArray.from_arrays(pa.array(_split_codes(s.name, n, split, val_rows)), split_dict),
                    pa.array(pos[:, 0]),
                    pa.array(pos[:, 1]),
                    pa.array(z),
                    ct,
                    pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), len(genes)),
                    *(_labels_column(s.annotations[a], lv)  # type: ignore[index]
                      for a, lv in levels.items()),
                ],
                schema=schema,
            )
            writer.write_table(table, row_group_size=n)
            del x, table


def _split_codes(name: str, n: int, split: dict[str, str], val_rows: dict[str, np.ndarray] | None) -> np.ndarray:
    """The split column of one section: its split, with its validation cells (``dataset.validation: cells``)
    marked 'val'."""
    codes = np.full(n, SPLITS.index(split[name]), np.int8)
    if val_rows and name in val_rows:
        codes[val_rows[name]] = SPLITS.index("val")
    return codes


def annotation_levels(raw: RawData) -> dict[str, list[str]]:
    """Each annotation (``dataset.annotation_keys``) -> its sorted labels over all sections: one dictionary
    per column, shared by every row group."""
    names = list(raw.sections[0].annotations or {}) if raw.sections else []
    return {a: sorted({v for s in raw.sections
                       for v in s.annotations[a] if v is not None})  # type: ignore[index]
            for a in names}


def _labels_column(values: np.ndarray, levels: list[str]) -> pa.DictionaryArray:
    code = {v: i for i, v in enumerate(levels)}
    return pa.DictionaryArray.from_arrays(pa.array([code.get(v) for v in values], pa.int32()),
                                          pa.array(levels, pa.string()))


def write_processed(raw: RawData, dcfg: DatasetConfig, out: Path) -> dict[str, Any]:
    """Normalise, split and write ``raw`` to ``out`` atomically; return the manifest."""
    out = Path(out)
    secs = raw.sections
    for s in secs:
        if s.n_cells < 2:
            raise DataError(f"{s.file}: section '{s.name}' has {s.n_cells} cell(s); remove it or merge it, a section needs >= 2 cells")
    split = split_sections(raw, dcfg)
    train = [i for i, s in enumerate(secs) if split[s.name] == "train"]
    g = len(raw.genes)  # columns read; len(genes) columns written
    # dataset.validation "cells": a contiguous patch of each training section validates (splits.validation_cells)
    val_rows = {secs[i].name: rows for i in train
                if len(rows := validation_cells(secs[i].coords, dcfg.val_fraction, dcfg.split_seed + i))
                } if dcfg.validation == "cells" else {}

    found, applied = detect_input(raw, dcfg)  # pass 1

    # Gene selection: a gene list wins; else highly variable genes of the training sections when the data
    # have more genes than dataset.n_top_genes; else every gene.
    if raw.keep is not None:
        selection = {"method": "genes_file", "genes_file": dcfg.genes_file}
    elif dcfg.n_top_genes is not None and g > dcfg.n_top_genes:
        raw.keep = select_hvg(raw, train, applied, dcfg.target_sum, dcfg.n_top_genes)
        selection = {"method": "highly_variable_genes", "flavor": "seurat", "n_top_genes": dcfg.n_top_genes}
    else:
        selection = {"method": "all"}
    selection |= {"from_genes": g, "selected": int(g if raw.keep is None else len(raw.keep)),
                  "on_sections": [secs[i].name for i in train]}
    genes = raw.kept_genes

    n_tot, mean, std = _training_moments(raw, train, applied, dcfg.target_sum)  # pass 2

    # Coordinates: per-section centre; one scale = RMS radius of centred training cells.
    dims = raw.dims
    centers = {s.name: s.coords.mean(axis=0) for s in secs}
    sq = sum(float(((secs[i].coords - centers[secs[i].name]) ** 2).sum()) for i in train)
    scale = float(np.sqrt(sq / n_tot))
    if not scale > 0:
        raise DataError(f"{secs[0].file}: training cells all sit at one point; coordinates need a spread")

    cell_types = sorted({t for s in secs if s.cell_types is not None for t in s.cell_types if t is not None})
    all_ids = np.concatenate([s.cell_ids for s in secs])
    prefix_ids = len(np.unique(all_ids)) != len(all_ids)  # make ids unique as "section:id" only when needed
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "package_version": __version__,
        "dataset": dcfg.name,
        "source": raw.source,
        "genes": genes,
        "n_genes": len(genes),
        "dims": dims,
        "n_cells": int(sum(s.n_cells for s in secs)),
        "sections": [s.name for s in secs],
        "splits": {k: [s.name for s in secs if split[s.name] == k or (k == "val" and s.name in val_rows)]
                   for k in SPLITS},
        "validation": {"method": dcfg.validation, "fraction": dcfg.val_fraction,
                       "cells": {k: len(v) for k, v in val_rows.items()}} if dcfg.validation == "cells" else None,
        "cells_per_section": {s.name: s.n_cells for s in secs},
        "fold": ({"dataset": dcfg.fold_of or dcfg.name, "index": dcfg.fold, "of": dcfg.num_folds}
                 if dcfg.num_folds > 1 else None),
        "cell_types": cell_types or None,
        "annotations": list(annotation_levels(raw)),  # cells.parquet columns annotation_<name>
        "gene_selection": selection,
        "normalization": {
            "input": found,
            "applied": applied,
            "target_sum": dcfg.target_sum if applied == "library_size_log1p" else None,
            "gene_mean": mean.tolist(),
            "gene_std": std.tolist(),
        },
        "coordinates": {"scale": scale, "units": dcfg.coordinate_units,
                        "centers": {k: [*map(float, v), *[0.0] * (3 - dims)] for k, v in centers.items()}},
        "source_checksums": dict(raw.checksums),
        "source_files": dict(raw.source_files or {}),
        "notes": list(raw.notes or []),
        "parameters": to_dict(dcfg),
    }
    with atomic_dir(out) as tmp:  # pass 3
        _write_cells(tmp / "cells.parquet", raw, dcfg, split, applied, mean, std, centers, scale, cell_types, prefix_ids,
                     val_rows)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def preprocess(raw_dir: Path, dcfg: DatasetConfig, out: Path) -> dict[str, Any]:
    """Preprocess a folder written by ``fetch-data``."""
    return write_processed(open_raw(raw_dir, dcfg), dcfg, out)


def preprocess_anndata(adata: Any, dcfg: DatasetConfig, out_dir: Path) -> dict[str, Any]:
    """Preprocess an in-memory AnnData (keys from ``dcfg``); the Python API used by tests and notebooks."""
    return write_processed(from_anndata(adata, dcfg), dcfg, out_dir)


def main(args: Any, cfg: Any) -> int:
    m = preprocess(args.raw, cfg.dataset, args.out)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in m["splits"].items())
    sel = m["gene_selection"]
    how = {"all": "all genes", "genes_file": "genes_file",
           "highly_variable_genes": "highly variable on training sections"}[sel["method"]]
    print(f"preprocess: {m['n_cells']} cells x {m['n_genes']} genes ({how}, of {sel['from_genes']}), {m['dims']}D, "
          f"sections {sizes}, input {m['normalization']['input']} -> {args.out}")
    print(f"preprocess: {split_line(m)}")
    return 0


def split_line(manifest: dict[str, Any]) -> str:
    """Which section went where, with its cell count: 'train: s2 (645 cells), s1 (400 cells); val: ...'."""
    cells = manifest["cells_per_section"]
    return "; ".join(
        f"{k}: " + ", ".join(f"{s} ({cells[s]:,} cells)" for s in names)
        for k, names in manifest["splits"].items() if names
    )
