"""Raw data readers: a folder written by ``fetch-data`` (or an in-memory AnnData) -> ``RawData``.

Formats (``dataset.source``):
- ``bdtnp``: ``dge.txt`` + ``geometry.txt`` of the BDTNP atlas, cut into equal-count slabs (the sections);
- ``synthetic``: the generator's ``.h5ad`` (scanpy-default keys);
- ``h5ad``: AnnData files (scanpy conventions: ``obsm[coordinate_key]``, ``obs[section_key]``,
  ``obs[cell_type_key]``, expression in ``X`` or ``layers[layer]``), one file or a folder of one per section;
- ``csv``: LUNA-style tables (Yu et al. 2025): ``coord_X``, ``coord_Y``[, ``coord_Z``], ``cell_section``,
  ``cell_class``, then one column per gene; or tables with other column names, named by ``coordinate_obs``,
  ``cell_id_key``, ``meta_columns`` (MERFISH MOp tables: ``index``, ``cell_volume``, ``pos_x``, ``pos_y``);
- ``rdata``: R data (``.RData``/``.rda``/``.rds``) read without R by the PyPI package ``rdata``; the config
  names the objects (``dataset.rdata``): a count matrix and a data frame of cells, or two named lists of them
  with one entry per section (STARmap as published for BASS).

``open_raw`` turns a fetched folder into ``RawData``: sections whose coordinates are in memory and whose
expression rows are read on demand, so preprocessing holds one section of expression at a time.

Longer than ~700 lines on purpose: one reader per format with the checks that name the user's file, field and
fix for each way a file can be wrong; split further, each reader would import the same checks back.

Long because every reader (bdtnp, synthetic, h5ad, csv, R data) is here with its one-line errors; they
share ``RawData`` and its checks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from alphastomics.artifacts import DataError, sha256_file
from alphastomics.config import DatasetConfig

FETCH_JSON = "fetch.json"  # by fetch-data: {source, origin, files: {name: sha256}[, paths, urls, mirror]}
READ_CHUNK_ROWS = 65536  # rows per h5 read when a section's rows are not contiguous


def verify_sha256(path: Path, expected: str, what: str, fix: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"{what}: sha256 mismatch (expected {expected}, got {actual}); {fix}")
    return actual


# Readers: RawData = sections with coordinates in memory and expression read on demand


@dataclass
class RawSection:
    name: str
    file: str  # the user's file, for error messages (not the linked copy under results/)
    coords: np.ndarray  # (n, D) float64
    cell_ids: np.ndarray  # (n,) str
    cell_types: np.ndarray | None  # (n,) object (str or None)
    load: Callable[[], np.ndarray]  # -> (n, G) float32, a fresh array the caller may modify
    # dataset.annotation_keys: output name -> (n,) object labels (str or None), e.g. a cortical layer
    annotations: dict[str, np.ndarray] | None = None

    @property
    def n_cells(self) -> int:
        return len(self.coords)


@dataclass
class RawData:
    source: str
    genes: list[str]
    dims: int
    sections: list[RawSection]
    checksums: dict[str, str]
    slab_cut: bool = False  # sections made by cutting one specimen (bdtnp): split rule alternates slabs
    expression_field: str = "X"
    # genes_file or highly variable genes: columns kept after normalisation (library sizes use every shared
    # gene, as scanpy does before subsetting to a gene panel); None = all genes
    keep: np.ndarray | None = None
    source_files: dict[str, str] | None = None  # fetched name -> the user's file it came from
    notes: list[str] | None = None  # what the reader changed or missed (constant z dropped, no cell types)

    @property
    def kept_genes(self) -> list[str]:
        return self.genes if self.keep is None else [self.genes[i] for i in self.keep]


def note(text: str) -> None:
    """A change the readers made to the user's data; printed, so it lands in the stage's log."""
    print(f"note: {text}", file=sys.stderr)


def _take_rows(read: Callable[[int, int], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Dense rows ``rows`` (sorted) of an on-disk dense matrix, read by contiguous spans one chunk at a time."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo == len(rows):
        return _as_dense_f32(read(lo, hi))
    parts = []
    for start in range(lo, hi, READ_CHUNK_ROWS):
        stop = min(start + READ_CHUNK_ROWS, hi)
        sel = rows[(rows >= start) & (rows < stop)]
        if len(sel):
            parts.append(_as_dense_f32(read(start, stop)[sel - start]))
    return np.concatenate(parts)


def _as_dense_f32(block: Any) -> np.ndarray:
    if hasattr(block, "toarray"):
        block = block.toarray()
    return np.array(block, dtype=np.float32, copy=True, order="C")


def _row_loader(matrix: Callable[[], Any], rows: np.ndarray) -> Callable[[], np.ndarray]:
    """Section rows of ``matrix()`` (an in-memory CSR/ndarray or an on-disk h5py dataset), densified."""

    def load() -> np.ndarray:
        m = matrix()
        if sparse.issparse(m) or isinstance(m, np.ndarray):
            return _as_dense_f32(m[rows])  # CSR row gather: any row order, no dense copy of other rows
        return _take_rows(lambda a, b: m[a:b], rows)

    return load


def _cached_csr(read: Callable[[], Any]) -> Callable[[], Any]:
    """Read a sparse matrix once, as CSR: sections are gathered by row index in any order. A CSC matrix
    (column-major) is converted once, the only time two copies of the matrix are held."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            m = read()
            if sparse.issparse(m) and m.format != "csr":
                m = sparse.csr_matrix(m)
            cache.append(m)
        return cache[0]

    return get


def _check_coords(coords: Any, file: str, field: str, fix: str = "") -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        shape = "x".join(map(str, coords.shape))
        raise DataError(f"{file}: {field} has shape {shape}; coordinates must be (cells, 2) or (cells, 3){fix}")
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise DataError(
            f"{file}: {field} has {int(bad.sum())} cells with NaN/inf coordinates (first row {int(np.argmax(bad))});"
            " remove those cells or fix their coordinates"
        )
    return coords


def _check_cell_ids(ids: np.ndarray, file: str, field: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1]
        raise DataError(
            f"{file}: {field} has {len(ids) - len(uniq)} duplicate cell id(s) (first '{dup[0]}'); cells are matched "
            "to their true positions by id: make the ids unique in the file (AnnData: adata.obs_names_make_unique())"
        )


def _labels(values: Any) -> np.ndarray:
    """Per-cell labels as str, missing (NA, NaN, empty) as None."""
    return np.array([None if pd.isna(v) or v == "" else str(v) for v in values], dtype=object)


def _annotations(table: pd.DataFrame | None, dcfg: DatasetConfig, file: str, what: str = "obs"
                 ) -> dict[str, np.ndarray] | None:
    """The columns named by ``dataset.annotation_keys`` (output name -> column), as labels."""
    if not dcfg.annotation_keys:
        return None
    have = [] if table is None else [str(c) for c in table.columns]
    out = {}
    for name, col in dcfg.annotation_keys.items():
        if not name.replace("_", "").isalnum():
            raise DataError(f"config: dataset.annotation_keys has name '{name}'; use letters, digits and _ "
                            "(it becomes the column annotation_<name>)")
        if col not in have:
            raise DataError(f"{file}: {what} column '{col}' not found ({what} has: "
                            f"{', '.join(have[:12]) or 'nothing'}); "
                            f"fix dataset.annotation_keys.{name} or remove it")
        out[name] = _labels(table[col])  # type: ignore[index]
    return out


def _rows(annotations: dict[str, np.ndarray] | None, rows: np.ndarray) -> dict[str, np.ndarray] | None:
    return None if annotations is None else {k: v[rows] for k, v in annotations.items()}


def _unique_genes(genes: list[str], file: str, field: str) -> list[str]:
    """Gene names made unique the way anndata's ``var_names_make_unique`` does ('g', 'g-1', ...), with a note."""
    if len(set(genes)) == len(genes):
        return genes
    import anndata.utils

    unique = [str(g) for g in anndata.utils.make_index_unique(pd.Index(genes))]
    dup = sorted({g for g in genes if genes.count(g) > 1})
    note(f"{file}: {field} has {len(genes) - len(set(genes))} repeated gene name(s) ({', '.join(dup[:5])}); "
         "made unique as NAME-1, NAME-2 ... (anndata's var_names_make_unique)")
    return unique


def label_column(obs: pd.DataFrame, key: str, where: str, fix: str, what: str) -> np.ndarray:
    """``obs[key]`` as strings, every cell labelled (a section, a group of cells); one-line errors naming
    the setting ``fix`` that chooses the column."""
    if key not in obs.columns:
        have = ", ".join(map(str, obs.columns[:10])) or "no columns"
        raise DataError(f"{where}: obs['{key}'] not found (obs has: {have}); set {fix} to the column naming each "
                        f"cell's {what}")
    col = obs[key]
    if col.isna().any():
        raise DataError(f"{where}: obs['{key}'] is missing for {int(col.isna().sum())} cells; give every cell "
                        f"a {what} or drop those cells")
    return col.astype(str).to_numpy()


def _sections_of(
    file: str, n: int, obs: pd.DataFrame | None, section_key: str | None, default: str
) -> dict[str, np.ndarray]:
    """Section name -> sorted row indices (one section named ``default`` when there is no section column).
    Rows of a section need not be adjacent: they are gathered by index."""
    if n == 0:
        raise DataError(f"{file}: the file has no cells; remove it or give a file with cells")
    if obs is None or not section_key:
        return {default: np.arange(n)}
    labels = label_column(obs, section_key, file, "dataset.section_key", "section")
    names, inverse = np.unique(labels, return_inverse=True)
    return {str(s): np.flatnonzero(inverse == i) for i, s in enumerate(names)}


def _coords_from_obs(obs: pd.DataFrame | None, columns: tuple[str, ...], file: str,
                     what: str = "obs") -> np.ndarray:
    if len(columns) not in (2, 3):
        raise DataError(f"config: dataset.coordinate_obs names {len(columns)} column(s); name 2 (x, y) or 3 (x, y, z)")
    have = [] if obs is None else list(obs.columns)
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(f"{file}: {what} column(s) {missing} not found ({what} has: "
                        f"{', '.join(map(str, have[:10])) or 'nothing'}); "
                        "set dataset.coordinate_obs to the coordinate columns")
    field = f"{what} " + "/".join(columns)
    try:
        values = obs[list(columns)].to_numpy(dtype=np.float64)  # type: ignore[index]
        return _check_coords(values, file, field)
    except ValueError:
        raise DataError(f"{file}: {what} columns {list(columns)} are not numeric; "
                        "set dataset.coordinate_obs to numeric columns") from None


def _annotated_sections(
    file: str,
    obs: pd.DataFrame | None,
    n: int,
    coords: np.ndarray,
    matrix: Callable[[], Any],
    dcfg: DatasetConfig,
    section_key: str | None,
    default: str,
) -> list[RawSection]:
    """Sections of one AnnData (file or in memory): checked cell ids, cell types, row loaders."""
    if n != len(coords):
        raise DataError(f"{file}: coordinates have {len(coords)} rows but the expression matrix has {n}; fix the file")
    if obs is not None:
        ids = obs.index.astype(str).to_numpy()
        _check_cell_ids(ids, file, "obs_names")
    else:
        ids = np.array([f"cell{i}" for i in range(n)])
    types = None
    ct_key = dcfg.cell_type_key
    if obs is not None and ct_key and ct_key in obs.columns:
        types = np.array([None if pd.isna(v) else str(v) for v in obs[ct_key]], dtype=object)
    annotations = _annotations(obs, dcfg, file)
    groups = _sections_of(file, n, obs, section_key, default)
    return [
        RawSection(name, file, coords[rows], ids[rows], None if types is None else types[rows],
                   _row_loader(matrix, rows), _rows(annotations, rows))
        for name, rows in groups.items()
    ]


def _read_h5ad_file(
    path: Path, dcfg: DatasetConfig, one_file: bool, label: str | None = None
) -> tuple[list[str], list[RawSection], str]:
    """Structure of one .h5ad (obs, var, coordinates) read now; expression read when a section loads.
    Sparse X/layers are read whole into memory once (CSR); dense ones stay on disk, read by row spans."""
    import anndata.io as adio
    import h5py

    file = label or str(path)
    if path.stat().st_size == 0:
        raise DataError(f"{file}: the file is empty; remove it or give a non-empty .h5ad file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise DataError(f"{file}: not a readable .h5ad (HDF5) file; re-export it with anndata (adata.write_h5ad) "
                        "or fix dataset.path") from None
    try:
        obs = adio.read_elem(f["obs"]) if "obs" in f else None
        genes = [str(g) for g in adio.read_elem(f["var"]).index] if "var" in f else []
    except Exception as err:  # anndata raises many types on files it did not write
        raise DataError(f"{file}: obs/var cannot be read as AnnData ({type(err).__name__}); re-export it with anndata") from None
    field = "X" if dcfg.layer is None else f"layers['{dcfg.layer}']"
    elem_path = "X" if dcfg.layer is None else f"layers/{dcfg.layer}"
    if elem_path not in f:
        have = ", ".join(f["layers"].keys()) if "layers" in f and len(f["layers"]) else "none"
        raise DataError(f"{file}: {field} not found (layers: {have}); set dataset.layer to an existing layer (or null for X)")
    if dcfg.coordinate_obs:
        coords = _coords_from_obs(obs, dcfg.coordinate_obs, file)
    else:
        key = dcfg.coordinate_key
        if "obsm" not in f or key not in f["obsm"]:
            have = ", ".join(f["obsm"].keys()) if "obsm" in f and len(f["obsm"]) else "nothing"
            raise DataError(f"{file}: obsm['{key}'] not found (obsm has: {have}); set dataset.coordinate_key to an obsm key,"
                            " or dataset.coordinate_obs to two or three obs columns")
        coords = _check_coords(adio.read_elem(f["obsm"][key]), file, f"obsm['{key}']")
    elem = f[elem_path]
    if isinstance(elem, h5py.Dataset):
        if elem.ndim != 2:
            raise DataError(f"{file}: {field} is not a 2-D matrix; store cells x genes")
        n, n_genes = elem.shape
        matrix: Callable[[], Any] = lambda: elem  # noqa: E731
    else:
        enc = elem.attrs.get("encoding-type", "")
        if enc not in ("csr_matrix", "csc_matrix"):
            raise DataError(f"{file}: {field} is stored as '{enc}', not a matrix; store expression as a dense or sparse matrix")
        n, n_genes = (int(v) for v in elem.attrs["shape"])
        matrix = _cached_csr(lambda: adio.read_elem(elem))
    if n_genes != len(genes):
        raise DataError(f"{file}: {field} has {n_genes} genes but var has {len(genes)}; fix the file")
    genes = _unique_genes(genes, file, "var_names")
    sections = _annotated_sections(file, obs, n, coords, matrix, dcfg, dcfg.section_key if one_file else None, path.stem)
    return genes, sections, field


def _read_csv_file(
    path: Path, dcfg: DatasetConfig, one_file: bool, label: str | None = None
) -> tuple[list[str], list[RawSection], str]:
    """LUNA-style columns by default; other tables name theirs (coordinate_obs, cell_id_key, meta_columns)."""
    file = label or str(path)
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=["NaN", "nan", ""], low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{file}: the file is empty; remove it or give a LUNA-style csv with cells") from None
    except (UnicodeDecodeError, pd.errors.ParserError):
        raise DataError(f"{file}: not a readable csv table; give a LUNA-style csv or fix dataset.source") from None
    have = ", ".join(map(str, df.columns[:10]))
    if dcfg.coordinate_obs:
        coord_cols = list(dcfg.coordinate_obs)
        coords = _coords_from_obs(df, dcfg.coordinate_obs, file, "csv")
    else:
        coord_cols = [c for c in ("coord_X", "coord_Y", "coord_Z") if c in df.columns]
        if coord_cols[:2] != ["coord_X", "coord_Y"]:
            raise DataError(f"{file}: columns coord_X/coord_Y not found (csv has: {have}); name the "
                            "coordinate columns coord_X, coord_Y[, coord_Z], or set dataset.coordinate_obs")
        extra = [c for c in df.columns if c.startswith("coord_") and c not in coord_cols]
        if extra:
            raise DataError(f"{file}: extra coordinate column(s) {extra}; "
                            "only 2D or 3D coordinates are supported")
        coords = _check_coords(df[coord_cols].to_numpy(dtype=np.float64), file, "/".join(coord_cols))
    missing = [c for c in dcfg.meta_columns if c not in df.columns]
    if missing:
        raise DataError(f"{file}: column(s) {missing} of dataset.meta_columns not found (csv has: {have}); "
                        "remove them from dataset.meta_columns")
    id_key = dcfg.cell_id_key or ("cell_id" if "cell_id" in df.columns else None)
    if id_key is not None and id_key not in df.columns:
        raise DataError(f"{file}: column '{id_key}' not found (csv has: {have}); "
                        "set dataset.cell_id_key to the column of cell ids, or null")
    section_key = "cell_section" if dcfg.section_key in (None, "section") else dcfg.section_key
    ct_key = "cell_class" if dcfg.cell_type_key in (None, "cell_type") else dcfg.cell_type_key
    annotations = _annotations(df, dcfg, file, "csv")
    meta = (set(coord_cols) | {section_key, ct_key, "cell_id", "Unnamed: 0"} | set(dcfg.meta_columns)
            | {id_key} | set(dcfg.annotation_keys.values()))
    genes = [str(c) for c in df.columns if c not in meta]
    try:
        expr = df[genes].to_numpy(dtype=np.float32)
    except ValueError:
        bad = next((g for g in genes if not pd.api.types.is_numeric_dtype(df[g])), genes[0])
        raise DataError(f"{file}: column '{bad}' is not numeric; "
                        "list non-gene columns in dataset.meta_columns or remove them") from None
    if id_key is not None:
        ids = df[id_key].astype(str).to_numpy()
        _check_cell_ids(ids, file, f"column {id_key}")
    else:
        ids = np.array([f"{path.stem}_{i}" for i in range(len(df))])
    types = _labels(df[ct_key]) if ct_key in df.columns else None
    groups = _sections_of(file, len(df), df if one_file and section_key in df.columns else None, section_key, path.stem)
    sections = [
        RawSection(name, file, coords[rows], ids[rows], None if types is None else types[rows],
                   (lambda r=rows: np.array(expr[r], dtype=np.float32)), _rows(annotations, rows))
        for name, rows in groups.items()
    ]
    return genes, sections, "gene columns"


def _r_kind(obj: Any) -> str:
    """What an R object converted by ``rdata`` is, in R's words, for messages."""
    if isinstance(obj, dict):
        return "named list"
    if isinstance(obj, list):
        return "list without names"
    if isinstance(obj, pd.DataFrame):
        return "data frame"
    if isinstance(obj, np.ndarray) or hasattr(obj, "dims"):
        return f"{np.ndim(obj)}-D array"
    return f"R object ({type(obj).__name__})"


def _load_r(path: Path, file: str) -> dict[str, Any]:
    """The named objects of an .RData/.rda file, or the elements of the named list an .rds holds."""
    import rdata

    if path.stat().st_size == 0:
        raise DataError(f"{file}: the file is empty; remove it or give a non-empty R data file")
    rds = path.suffix.lower() == ".rds"
    try:
        obj = rdata.read_rds(path) if rds else rdata.read_rda(path)
    except Exception as err:  # the parser raises many types on files R did not write
        raise DataError(f"{file}: not a readable R data file ({type(err).__name__}); give a file written "
                        "by R's save() (.RData, .rda) or saveRDS() (.rds), or fix dataset.source") from None
    if not isinstance(obj, dict):
        raise DataError(f"{file}: the .rds holds a {_r_kind(obj)}, not a named list; save one "
                        "(saveRDS(list(counts = ..., obs = ...))) and name its elements in dataset.rdata")
    return {str(k): v for k, v in obj.items()}


def _r_matrix(obj: Any, file: str, where: str) -> tuple[Any, list[Any]]:
    """(values, [row names or None, column names or None]) of an R matrix as ``rdata`` converts it: a
    DataArray (a matrix with dimnames), an ndarray, a data frame, or a dgCMatrix (S4: slots i, p, x, Dim)."""
    if hasattr(obj, "dims") and hasattr(obj, "coords"):  # xarray.DataArray
        names = [obj.coords[d].values if d in obj.coords else None for d in obj.dims]
        values = obj.values
    elif isinstance(obj, pd.DataFrame):
        index = None if isinstance(obj.index, pd.RangeIndex) else obj.index.to_numpy()
        bad = [c for c in obj.columns if not pd.api.types.is_numeric_dtype(obj[c])]
        if bad:
            raise DataError(f"{file}: {where} column '{bad[0]}' is not numeric; name a data frame of counts "
                            "(numbers only) in dataset.rdata.counts")
        names, values = [index, obj.columns.to_numpy()], obj.to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(obj, np.ndarray):
        names, values = [None, None], obj
    elif all(hasattr(obj, k) for k in ("i", "p", "x", "Dim")):  # Matrix::dgCMatrix, column-compressed
        shape = tuple(int(v) for v in np.asarray(obj.Dim))
        values = sparse.csc_matrix((np.asarray(obj.x), np.asarray(obj.i), np.asarray(obj.p)), shape=shape)
        dimnames = getattr(obj, "Dimnames", None) or [None, None]
        names = [None if d is None else np.asarray(d) for d in list(dimnames)[:2]]
    else:
        fix = ("set dataset.rdata.per_section: true if it holds one matrix per section, or name" if
               isinstance(obj, dict) else "name")
        raise DataError(f"{file}: {where} is a {_r_kind(obj)}, not a matrix; {fix} a count matrix (dense or "
                        "dgCMatrix) or a data frame of counts in dataset.rdata.counts")
    if values.ndim != 2:
        raise DataError(f"{file}: {where} is a {values.ndim}-D array, not a matrix; name a count matrix in "
                        "dataset.rdata.counts")
    if values.dtype.kind not in "biuf":
        raise DataError(f"{file}: {where} holds {values.dtype} values, not numbers; name the count matrix in "
                        "dataset.rdata.counts")
    return values, names


def _rdata_part(file: str, counts: Any, obs: Any, cwhere: str, owhere: str, dcfg: DatasetConfig
                ) -> tuple[Any, list[str], np.ndarray, pd.DataFrame]:
    """One count matrix + its data frame of cells -> (cells x genes matrix, genes, cell ids, obs)."""
    values, names = _r_matrix(counts, file, cwhere)
    if not isinstance(obs, pd.DataFrame):
        raise DataError(f"{file}: {owhere} is a {_r_kind(obs)}, not a data frame of cells; "
                        "set dataset.rdata.obs to the data frame of cell metadata")
    flip = dcfg.rdata.genes_by_cells
    if flip:
        values, names = values.T, names[::-1]
    n, n_genes = values.shape
    if n != len(obs):
        hint = (f"; set dataset.rdata.genes_by_cells: {str(not flip).lower()}" if n_genes == len(obs)
                else "; give one row of cell data per cell")
        raise DataError(f"{file}: {cwhere} has {n} cells ({'columns' if flip else 'rows'}) but {owhere} has "
                        f"{len(obs)} rows{hint}")
    cells, genes = names
    if genes is None:
        raise DataError(f"{file}: {cwhere} has no gene names; give the matrix dimnames (genes as "
                        f"{'row' if flip else 'column'} names) or set dataset.rdata.genes_by_cells")
    # R's automatic row names (1..n) name no cell
    automatic = isinstance(obs.index, pd.RangeIndex) or (
        pd.api.types.is_integer_dtype(obs.index) and np.array_equal(obs.index, np.arange(1, len(obs) + 1)))
    obs_ids = None if automatic else obs.index.astype(str).to_numpy()
    if cells is not None:
        cells = np.asarray(cells).astype(str)
        if obs_ids is not None and not np.array_equal(cells, obs_ids):
            first = int(np.argmax(cells != obs_ids))
            raise DataError(f"{file}: cell {first} is '{cells[first]}' in {cwhere} but '{obs_ids[first]}' in "
                            f"{owhere}; save the counts and the cell data in the same cell order")
    ids = cells if cells is not None else obs_ids
    if ids is None:
        ids = np.array([f"cell{i}" for i in range(n)])
    _check_cell_ids(ids, file, f"cell names of {cwhere}")
    matrix = sparse.csr_matrix(values, dtype=np.float32) if sparse.issparse(values) else values
    return matrix, [str(g) for g in genes], ids, obs


def _read_rdata_file(
    path: Path, dcfg: DatasetConfig, one_file: bool, label: str | None = None
) -> tuple[list[str], list[RawSection], str]:
    """R data read through config keys alone (``dataset.rdata``): the file is parsed once, into memory."""
    file = label or str(path)
    r = dcfg.rdata
    objects = _load_r(path, file)
    have = ", ".join(list(objects)[:12]) or "nothing"
    for key, name, what in (("counts", r.counts, "count matrix"), ("obs", r.obs, "data frame of cells")):
        if not name:
            raise DataError(f"{file}: dataset.rdata.{key} is not set (file has: {have}); "
                            f"set it to the object holding the {what}")
        if name not in objects:
            raise DataError(f"{file}: no object '{name}' (has: {have}); set dataset.rdata.{key}")
    counts, obs = objects[r.counts], objects[r.obs]  # type: ignore[index]
    if r.per_section:
        for name, obj in ((r.counts, counts), (r.obs, obs)):
            if not isinstance(obj, dict):
                raise DataError(f"{file}: '{name}' is a {_r_kind(obj)}, not a named list of sections; set "
                                "dataset.rdata.per_section: false, or name the lists")
        if [str(k) for k in counts] != [str(k) for k in obs]:
            raise DataError(f"{file}: the sections of '{r.counts}' ({', '.join(map(str, counts))}) and "
                            f"'{r.obs}' ({', '.join(map(str, obs))}) differ; "
                            "save both lists with the same names in the same order")
        parts = [(str(k), counts[k], obs[k], f'{r.counts}[["{k}"]]', f'{r.obs}[["{k}"]]') for k in counts]
    else:
        parts = [(None, counts, obs, str(r.counts), str(r.obs))]
    if not dcfg.coordinate_obs:
        cols = ", ".join(map(str, getattr(parts[0][2], "columns", [])[:10])) or "nothing"
        raise DataError(f"{file}: dataset.coordinate_obs is not set; "
                        f"name the x, y[, z] columns of {parts[0][4]} (has: {cols})")
    genes: list[str] | None = None
    sections = []
    for sec, c_obj, o_obj, cwhere, owhere in parts:
        matrix, g, ids, table = _rdata_part(file, c_obj, o_obj, cwhere, owhere, dcfg)
        g = _unique_genes(g, file, f"gene names of {cwhere}")
        if genes is None:
            genes = g
        elif g != genes:
            if sorted(g) != sorted(genes):
                raise DataError(f"{file}: {cwhere} has other genes than {parts[0][3]}; "
                                "save every section with the same genes")
            index = {x: i for i, x in enumerate(g)}
            matrix = matrix[:, [index[x] for x in genes]]
        coords = _coords_from_obs(table, dcfg.coordinate_obs, file, owhere)
        ct_key = dcfg.cell_type_key
        types = _labels(table[ct_key]) if ct_key and ct_key in table.columns else None
        annotations = _annotations(table, dcfg, file, owhere)
        if sec is not None:
            groups = {sec: np.arange(len(ids))}
        else:
            groups = _sections_of(file, len(ids), table if one_file else None, dcfg.section_key, path.stem)
        for name, rows in groups.items():
            sections.append(RawSection(name, file, coords[rows], ids[rows],
                                       None if types is None else types[rows],
                                       _row_loader(lambda m=matrix: m, rows), _rows(annotations, rows)))
    return genes or [], sections, str(r.counts)


def _read_bdtnp(raw: Path, dcfg: DatasetConfig) -> RawData:
    dge_path, geo_path = raw / "dge.txt", raw / "geometry.txt"
    # one gene is literally named "nan": without keep_default_na=False pandas would turn it into NaN
    dge = pd.read_csv(dge_path, sep="\t", keep_default_na=False)
    geo = pd.read_csv(geo_path, sep=" ", nrows=len(dge))  # only the first 3,039 rows pair with dge.txt
    coords = _check_coords(geo[["xcoord", "ycoord", "zcoord"]].to_numpy(), str(geo_path), "xcoord/ycoord/zcoord")
    expr = dge.to_numpy(dtype=np.float32)
    k = dcfg.num_slabs
    if not 2 <= k <= len(dge) // 2:
        raise DataError(f"config: dataset.num_slabs is {k}; use 2 .. {len(dge) // 2} slabs")
    axis = "xyz".index(dcfg.slab_axis)
    # equal-count slabs: the embryo is an ellipsoid, equal-width slabs would leave the tips nearly empty
    order = np.argsort(coords[:, axis], kind="stable")
    slab = np.empty(len(order), dtype=np.int64)
    slab[order] = np.arange(len(order)) * k // len(order)
    ids = np.array([f"cell{i:04d}" for i in range(len(dge))])
    sections = []
    for s in range(k):
        rows = np.flatnonzero(slab == s)
        sections.append(RawSection(f"slab{s:02d}", str(dge_path), coords[rows], ids[rows], None,
                                   (lambda r=rows: np.array(expr[r], dtype=np.float32))))
    return RawData("bdtnp", [str(g) for g in dge.columns], 3, sections, {}, slab_cut=True)


def _shared_genes(per_file: list[tuple[str, list[str]]], where: str) -> list[str]:
    shared = set(per_file[0][1])
    for _, genes in per_file[1:]:
        shared &= set(genes)
    if not shared:
        names = ", ".join(Path(p).name for p, _ in per_file)
        raise DataError(f"{where}: no gene is shared by all files ({names}); use files measuring common genes")
    return [g for g in per_file[0][1] if g in shared]  # order of the first file


def _select_genes(raw: RawData, genes: list[str], col_of: dict[str, dict[str, int]]) -> None:
    """Restrict every section to ``genes`` (in that order); ``col_of[file][gene]`` = column in that file."""
    for sec in raw.sections:
        cols = np.array([col_of[sec.file][g] for g in genes])
        if len(cols) != len(col_of[sec.file]) or not np.array_equal(cols, np.arange(len(cols))):
            sec.load = (lambda load=sec.load, c=cols: np.ascontiguousarray(load()[:, c]))
    raw.genes = list(genes)


def _flatten_constant_z(data: RawData, where: str) -> None:
    """3D coordinates whose z is constant within every section are 2D sections (z = a section's depth)."""
    if data.dims != 3 or data.slab_cut:
        return
    if all(np.ptp(s.coords[:, 2]) == 0 for s in data.sections):
        for s in data.sections:
            s.coords = np.ascontiguousarray(s.coords[:, :2])
        data.dims = 2
        note(f"{where}: z is constant within every section; sections treated as 2D (z dropped). Positions are "
             "centred per section, so a per-section depth carries no information")
        data.notes = [*(data.notes or []), "constant z dropped: 2D"]


def _note_missing_cell_types(data: RawData, dcfg: DatasetConfig, where: str) -> None:
    """A lab's file without the optional cell-type column: said once (log and the manifest's notes), since
    the cell-type metrics are then missing from every run's metrics and the report."""
    if data.source not in ("h5ad", "csv", "rdata") or any(s.cell_types is not None for s in data.sections):
        return
    key = dcfg.cell_type_key
    if data.source == "csv":
        key = "cell_class" if key in (None, "cell_type") else key
    if key is None:
        text = "no cell types (dataset.cell_type_key is null)"
    else:
        text = f"no cell-type column '{key}' (dataset.cell_type_key)"
    text += ": the cell-type metrics (neighborhood_ari, neighborhood_nmi) are not measured"
    note(f"{where}: {text}" + ("; set dataset.cell_type_key to the column of cell types if the file has one"
                               if key is not None else ""))
    data.notes = [*(data.notes or []), text]


def read_gene_list(path: str | Path, available: list[str]) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset.genes_file not found; fix the path or set it to null")
    wanted = [g.strip() for g in path.read_text().splitlines() if g.strip()]
    if not wanted:
        raise DataError(f"{path}: dataset.genes_file names no genes; put one gene name per line")
    have = set(available)
    missing = [g for g in wanted if g not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{path}: {len(missing)} gene(s) absent from the data ({shown}); remove them from the gene list")
    return wanted


def _check_options(dcfg: DatasetConfig) -> None:
    if dcfg.n_top_genes is not None and dcfg.n_top_genes < 1:
        raise DataError(f"config: dataset.n_top_genes is {dcfg.n_top_genes}; use a positive number or null for all genes")


def open_raw(raw: Path, dcfg: DatasetConfig, *, verify: bool = True) -> RawData:
    """Read a folder written by ``fetch-data`` (``fetch.json`` names the files, their checksums and origin)."""
    raw = Path(raw)
    _check_options(dcfg)
    info_path = raw / FETCH_JSON
    if not info_path.is_file():
        raise DataError(f"{info_path}: not found; run `python -m alphastomics fetch-data --out {raw}` first")
    info = json.loads(info_path.read_text())
    if info.get("source") != dcfg.source:
        raise DataError(f"{info_path}: source is '{info.get('source')}' but dataset.source is '{dcfg.source}'; rerun fetch-data")
    checksums = {}
    for name, sha in info["files"].items():
        if not (raw / name).is_file():
            raise DataError(f"{raw / name}: listed in fetch.json but missing; rerun fetch-data")
        checksums[name] = verify_sha256(raw / name, sha, str(raw / name), "the raw file changed since fetch-data; rerun it") if verify else sha
    labels: dict[str, str] = info.get("paths") or {}  # the user's own files, for messages
    files = [raw / n for n in info["files"]]
    if dcfg.source == "bdtnp":
        data = _read_bdtnp(raw, dcfg)
        col_of = {s.file: {g: i for i, g in enumerate(data.genes)} for s in data.sections}
    else:
        if dcfg.source == "synthetic":  # the generator writes scanpy-default keys whatever the config says
            dcfg = replace(dcfg, coordinate_key="spatial", coordinate_obs=(), section_key="section",
                           cell_type_key="cell_type", layer=None)
        reader = {"csv": _read_csv_file, "rdata": _read_rdata_file}.get(dcfg.source, _read_h5ad_file)
        per_file, sections, field = [], [], "X"
        for f in files:
            label = labels.get(f.name, str(f))
            genes, secs, field = reader(f, dcfg, len(files) == 1, label)
            per_file.append((label, genes))
            sections += secs
        where = info.get("origin", str(raw))
        dims = {s.coords.shape[1] for s in sections}
        if len(dims) > 1:
            raise DataError(f"{where}: files mix 2D and 3D coordinates; give all sections the same dimensions")
        genes = _shared_genes(per_file, where)
        data = RawData(dcfg.source, genes, dims.pop(), sections, {}, expression_field=field)
        col_of = {p: {g: i for i, g in enumerate(gs)} for p, gs in per_file}
        if len(files) > 1:
            all_ids = np.concatenate([s.cell_ids for s in sections])
            if len(np.unique(all_ids)) != len(all_ids):
                note(f"{where}: cell ids repeat across files; written as 'section:id'")
        _flatten_constant_z(data, where)
        _note_missing_cell_types(data, dcfg, where)
    names = [s.name for s in data.sections]
    if len(set(names)) != len(names):
        raise DataError(f"{info.get('origin', raw)}: section names repeat across files; give each file distinct section names")
    if dcfg.source != "bdtnp":
        _select_genes(data, data.genes, col_of)
    if dcfg.genes_file:
        index = {g: i for i, g in enumerate(data.genes)}
        data.keep = np.array([index[g] for g in read_gene_list(dcfg.genes_file, data.genes)])
    data.checksums = checksums
    data.source_files = dict(labels)
    return data


def from_anndata(adata: Any, dcfg: DatasetConfig, name: str = "anndata") -> RawData:
    """Wrap an in-memory AnnData (scanpy conventions) as RawData, rows gathered per section on demand."""
    _check_options(dcfg)
    where = f"<AnnData {name}>"
    if dcfg.coordinate_obs:
        coords = _coords_from_obs(adata.obs, dcfg.coordinate_obs, where)
    else:
        key = dcfg.coordinate_key
        if key not in adata.obsm:
            raise DataError(f"{where}: obsm['{key}'] not found (obsm has: {', '.join(adata.obsm) or 'nothing'}); "
                            "set dataset.coordinate_key to an obsm key, or dataset.coordinate_obs to two or three obs columns")
        coords = _check_coords(adata.obsm[key], where, f"obsm['{key}']")
    if dcfg.layer is not None and dcfg.layer not in adata.layers:
        raise DataError(f"{where}: layers['{dcfg.layer}'] not found; set dataset.layer to an existing layer (or null for X)")
    field = "X" if dcfg.layer is None else f"layers['{dcfg.layer}']"
    m = adata.X if dcfg.layer is None else adata.layers[dcfg.layer]
    matrix = _cached_csr(lambda: m) if sparse.issparse(m) else (lambda: np.asarray(m))
    genes = _unique_genes([str(g) for g in adata.var_names], where, "var_names")
    sections = _annotated_sections(where, adata.obs, adata.n_obs, coords, matrix, dcfg, dcfg.section_key, name)
    data = RawData("h5ad", genes, coords.shape[1], sections, {}, expression_field=field)
    _flatten_constant_z(data, where)
    _note_missing_cell_types(data, dcfg, where)
    if dcfg.genes_file:
        index = {g: i for i, g in enumerate(genes)}
        data.keep = np.array([index[g] for g in read_gene_list(dcfg.genes_file, genes)])
    return data
