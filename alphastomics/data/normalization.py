"""Expression normalisation, one definition for everything that brings values to the training scale.

``detect_input`` says what a matrix holds (counts, per-cell scaled values, normalised values) and so which
normalisation preprocess applies; ``normalise`` applies it (scanpy's ``normalize_total`` + ``log1p``, or
``log1p``, or nothing). Preprocess writes the training data with them and the reassemble stage brings a
lab's new cells to the same scale with them, so the two cannot drift apart.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from alphastomics.artifacts import DataError
from alphastomics.config import DatasetConfig
from alphastomics.data.raw import RawData


def normalise(x: np.ndarray, applied: str, target_sum: float, keep: np.ndarray | None) -> np.ndarray:
    """``applied`` (``detect_input``): "library_size_log1p" = ``scanpy.pp.normalize_total`` + ``log1p``
    (cells with no counts stay zero); "log1p" = ``log1p`` alone (values already scaled per cell, such as
    MERFISH's counts per cell volume); "none". Then keep the ``keep`` columns (gene list), so library sizes
    count every measured gene."""
    if applied == "library_size_log1p":
        x = _scanpy_lognorm(x, target_sum)
    elif applied == "log1p":
        np.log1p(x, out=x)
    return x if keep is None else np.ascontiguousarray(x[:, keep])


def _scanpy_lognorm(x: Any, target_sum: float) -> Any:
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(x)
    with warnings.catch_warnings():  # cells without counts stay zero, as documented
        warnings.filterwarnings("ignore", "Some cells have zero counts")
        sc.pp.normalize_total(a, target_sum=target_sum)
    sc.pp.log1p(a)
    return a.X


def _check_section(raw: RawData, i: int, x: np.ndarray) -> None:
    sec = raw.sections[i]
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise DataError(
            f"{sec.file}: {raw.expression_field} has NaN/inf in {bad} cells of section '{sec.name}'; "
            "remove those cells or fill the values"
        )


# Non-negative, non-integer values above this are per-cell scaled counts (e.g. MERFISH counts per cell
# volume), not log-normalised ones: log1p of counts normalised to 1e4 stays below 10, z-scores rarely pass 30.
SCALED_MIN_MAX = 30.0


def detect_input(raw: RawData, dcfg: DatasetConfig) -> tuple[str, str]:
    """Pass 1: validate every section and detect what the values are -> (input, applied normalisation).

    input: "counts" (integers >= 0), "scaled" (non-negative, non-integer, some value above
    ``SCALED_MIN_MAX``: counts already divided by a cell size such as its volume) or "normalized" (anything
    else: log-normalised or z-scored values). ``dataset.normalization`` "auto" applies library-size
    normalisation + log1p to counts, log1p alone to scaled values (their per-cell scaling is the data's
    own, so it is not redone) and nothing to normalised ones; "counts" on negative values is an error."""
    secs, g = raw.sections, len(raw.genes)
    is_counts, nonneg, top = True, True, 0.0
    for i in range(len(secs)):
        x = secs[i].load()
        if x.shape[1] != g:
            raise DataError(f"{secs[i].file}: {raw.expression_field} has {x.shape[1]} genes, expected {g}; "
                            "fix the file")
        _check_section(raw, i, x)
        nonneg &= bool((x >= 0).all())
        is_counts &= nonneg and bool((x == np.floor(x)).all())
        top = max(top, float(x.max(initial=0.0)))
        del x
    found = "counts" if is_counts else "scaled" if nonneg and top > SCALED_MIN_MAX else "normalized"
    mode = found if dcfg.normalization == "auto" else dcfg.normalization
    if mode in ("counts", "scaled") and not nonneg:
        raise DataError(f"{secs[0].file}: {raw.expression_field} has negative values but "
                        f"dataset.normalization is '{mode}'; set it to 'normalized' or 'auto'")
    return found, {"counts": "library_size_log1p", "scaled": "log1p", "normalized": "none"}[mode]
