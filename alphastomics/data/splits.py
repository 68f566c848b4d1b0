"""The split rule: every section to train, val or test, by section, never by cell (DESIGN section 3)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alphastomics.artifacts import DataError
from alphastomics.config import DatasetConfig
from alphastomics.data.raw import RawData


def assign_splits(
    names: list[str], dcfg: DatasetConfig, slab_cut: bool, where: str, sizes: Mapping[str, int] | None = None
) -> dict[str, str]:
    """Section -> split, by section, never by cell. Explicit lists win; slab-cut data hold out odd slabs;
    otherwise ``max(1, round(test_fraction * n))`` test sections and, when ``val_fraction > 0``,
    ``max(1, round(val_fraction * n))`` validation sections, always leaving one for training (3 sections:
    one each). The sections are shuffled with ``split_seed``; without ``sizes`` the first of them are held
    out, with ``sizes`` (cells per section) the smallest (the largest train), ties in the shuffled order.
    Test sections come first among those held out."""
    if len(names) < 2:
        raise DataError(
            f"{where}: only one section ('{names[0]}'); splits are by section, never by cell, so at least 2 "
            "sections are needed: set dataset.section_key to an obs column with several sections or give one file per section"
        )
    known = set(names)
    if dcfg.val_sections or dcfg.test_sections:
        for key, listed in (("val_sections", dcfg.val_sections), ("test_sections", dcfg.test_sections)):
            unknown = [s for s in listed if s not in known]
            if unknown:
                raise DataError(f"config: dataset.{key} names unknown section(s) {unknown}; use names from {sorted(known)[:8]}")
        both = set(dcfg.val_sections) & set(dcfg.test_sections)
        if both:
            raise DataError(f"config: section(s) {sorted(both)} in both dataset.val_sections and test_sections; list each once")
        split = {s: "val" if s in dcfg.val_sections else "test" if s in dcfg.test_sections else "train" for s in names}
        if "train" not in split.values():
            raise DataError("config: dataset.val_sections + test_sections hold out every section; leave one for training")
        return split
    if slab_cut:
        # Adjacent-slab hold-out, like adjacent tissue sections: odd slabs are held out, alternating
        # test, val, test, ... (slab01 test, slab03 val, slab05 test, slab07 val); even slabs train.
        split = {}
        for i, s in enumerate(names):
            split[s] = "train" if i % 2 == 0 else ("test" if (i // 2) % 2 == 0 else "val")
        return split
    n = len(names)
    if dcfg.val_fraction > 0 and n < 3:
        raise DataError(
            f"{where}: {n} sections ({', '.join(names)}) cannot give train, validation and test sections; set "
            "dataset.val_fraction=0 to train without validation, or list dataset.test_sections (and val_sections)"
        )
    rng = np.random.default_rng(dcfg.split_seed)
    order = [names[i] for i in rng.permutation(n)]
    n_test = min(max(1, int(round(dcfg.test_fraction * n))), n - 1)
    n_val = max(1, int(round(dcfg.val_fraction * n))) if dcfg.val_fraction > 0 else 0
    n_val = max(0, min(n_val, n - n_test - 1))  # keep at least one training section
    held = order[: n_test + n_val]
    if sizes is not None:
        # A lab's sections differ in size (coverslips of 400 and 645 cells): the model learns from the
        # largest ones. The smallest are held out (a stable sort: among equal sizes the seeded order, so equal
        # sizes give the plain shuffle) and dealt to test and val in the seeded order.
        smallest = set(sorted(order, key=lambda s: sizes[s])[: n_test + n_val])
        held = [s for s in order if s in smallest]
    split = {s: "train" for s in names}
    for s in held[:n_test]:
        split[s] = "test"
    for s in held[n_test:]:
        split[s] = "val"
    return split


def fold_splits(names: list[str], dcfg: DatasetConfig, slab_cut: bool, where: str) -> dict[str, str]:
    """Section -> split of cross-validation fold ``dcfg.fold`` (1..K, K = ``dcfg.num_folds``).

    With ``dataset.validation`` "cells" the validation cells lie inside the training sections
    (``validation_cells``), so every section but the tested group trains; K = the number of sections is then
    leave-one-section-out. Otherwise:

    Sections, in order (slabs along their axis; other data in the seeded order of ``dataset.split_seed``),
    are dealt into K groups round-robin (position p goes to group p mod K), so each group spreads over the
    tissue. Fold i tests group i mod K and validates on group (i + K // 2) mod K (K >= 3; with K = 2, on one
    section of the other group when ``val_fraction`` > 0); the rest train. Over the K folds every section is
    tested exactly once. Bdtnp's 8 slabs in 4 folds: fold 1 is the single split (slabs 01, 05 tested, 03, 07
    validate)."""
    k, i = dcfg.num_folds, dcfg.fold
    if not 1 <= i <= k:
        raise DataError(f"config: dataset.fold is {i}; use 1..{k} (dataset.num_folds)")
    if dcfg.validation == "cells":  # validation cells lie inside the training sections: no validation group
        if len(names) < k:
            raise DataError(f"{where}: {len(names)} sections cannot make {k} folds; set folds to at most "
                            f"{len(names)} ({len(names)} = leave one section out)")
        order = list(names) if slab_cut else [names[j] for j in np.random.default_rng(dcfg.split_seed).permutation(len(names))]
        test = set(order[i % k::k])
        return {s: "test" if s in test else "train" for s in names}
    if len(names) < 2 * k:
        raise DataError(
            f"{where}: {len(names)} sections cannot make {k} folds with a training section each; "
            f"set folds to at most {len(names) // 2} (or cut more slabs)"
        )
    order = list(names) if slab_cut else [names[j] for j in np.random.default_rng(dcfg.split_seed).permutation(len(names))]
    groups = [order[g::k] for g in range(k)]
    split = {s: "train" for s in names}
    if k >= 3:
        val = groups[(i + k // 2) % k] if dcfg.val_fraction > 0 else []
    else:
        other = groups[(i + 1) % k]
        val = other[:1] if dcfg.val_fraction > 0 and len(other) >= 2 else []
    for s in val:
        split[s] = "val"
    for s in groups[i % k]:
        split[s] = "test"
    return split


def split_sections(data: RawData, dcfg: DatasetConfig) -> dict[str, str]:
    """The split of a data set as read: a lab's own sections (h5ad, csv) by size, the largest training;
    synthetic sections are draws of one generator, exchangeable, and keep the plain seeded shuffle; a
    cross-validation fold (``dataset.num_folds`` > 1) is ``fold_splits``'s."""
    secs = data.sections
    if dcfg.num_folds > 1:
        return fold_splits([s.name for s in secs], dcfg, data.slab_cut, secs[0].file)
    sizes = {s.name: s.n_cells for s in secs} if data.source in ("h5ad", "csv", "rdata") else None
    return assign_splits([s.name for s in secs], dcfg, data.slab_cut, secs[0].file, sizes)


def validation_cells(coords: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of one training section withheld for validation (``dataset.validation: cells``): the
    ``round(fraction * n)`` cells nearest a seeded cell, a contiguous patch like the contiguous crops the
    model trains on, so that validation asks it to place tissue it has not seen. At least one cell stays
    in training; an empty array when ``fraction`` is 0."""
    n = len(coords)
    m = min(int(round(fraction * n)), n - 1)
    if m <= 0:
        return np.zeros(0, np.int64)
    centre = int(np.random.default_rng(seed).integers(n))
    d2 = ((coords - coords[centre]) ** 2).sum(axis=1)
    return np.sort(np.argsort(d2, kind="stable")[:m]).astype(np.int64)
