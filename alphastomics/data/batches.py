"""Processed Parquet -> batches of cells (docs/architecture.md, "Batches").

``ProcessedData`` opens a folder written by ``preprocess`` and reads one section (one Parquet row group)
at a time, with a bounded cache, so a data set larger than memory still trains. A training example is a
section or a crop of at most ``max_cells`` cells (the k nearest cells to a random seed cell = spatially
contiguous, or a random subset), randomly rotated/reflected and re-centred over its cells; ``collate``
pads examples to the largest with a boolean mask. The batch at step s depends only on
(seed, s, rank, world_size): a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import torch

from alphastomics.artifacts import DataError, read_manifest
from alphastomics.config import DataConfig
from alphastomics.data.synthetic import random_orthogonal

Split = Literal["train", "val", "test"]


@dataclass
class Section:
    """One section (or a crop of it) as numpy arrays."""

    name: str
    expression: np.ndarray  # (n, G) float32
    positions: np.ndarray  # (n, D) float32
    cell_type: np.ndarray  # (n,) int64, -1 = none
    cell_ids: np.ndarray  # (n,) str
    index: np.ndarray  # (n,) int64, row of each cell within the whole section

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, rows: np.ndarray) -> Section:
        return Section(self.name, self.expression[rows], self.positions[rows], self.cell_type[rows],
                       self.cell_ids[rows], self.index[rows])


@dataclass
class Batch:
    """Padded tensors; padding rows are zero, ``mask`` is True for real cells."""

    expression: torch.Tensor  # (B, N, G) float32
    positions: torch.Tensor  # (B, N, D) float32
    mask: torch.Tensor  # (B, N) bool
    index: torch.Tensor  # (B, N) long, -1 = padding
    sections: list[str] = field(default_factory=list)
    # Real cells per example, known when the batch is built on the host, so nothing reads them back from the
    # mask on the device (a host sync): per-example noise draws, and ``padded`` (softmax attention drops the
    # mask when no row is padding).
    lengths: list[int] | None = None

    @property
    def padded(self) -> bool:
        if self.lengths is None:
            return True
        return min(self.lengths) < self.mask.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(getattr(self, k).to(device, non_blocking=non_blocking)
                       for k in ("expression", "positions", "mask", "index")), list(self.sections), self.lengths)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch(*(getattr(self, k).pin_memory()
                       for k in ("expression", "positions", "mask", "index")), list(self.sections), self.lengths)

    @property
    def num_cells(self) -> int:
        return int(self.mask.sum())


class ProcessedData:
    """A preprocessed data set: manifest + lazily read, cached sections."""

    def __init__(self, path: str | Path, cache_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        m = self.manifest
        self.genes: list[str] = list(m["genes"])
        self.dims: int = int(m["dims"])
        self.sections: list[str] = list(m.get("sections") or m["cells_per_section"])
        self.splits: dict[str, list[str]] = {k: list(m["splits"].get(k, [])) for k in ("train", "val", "test")}
        self.cell_types: list[str] = list(m["cell_types"] or [])
        # dataset.validation "cells": training sections hold validation cells (split column 'val'), which
        # training never sees and validation reads alone (``part``).
        self.validation_cells: bool = (m.get("validation") or {}).get("method") == "cells"
        self._is_val: dict[str, np.ndarray] = {}
        self._group = {s: i for i, s in enumerate(self.sections)}
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, Section] = OrderedDict()
        self._file: pq.ParquetFile | None = None
        self._pid = -1

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy without the open file or the cache; each opens its own.
        state = dict(self.__dict__)
        state.update(_file=None, _pid=-1, _cache=OrderedDict())
        return state

    def _parquet(self) -> pq.ParquetFile:
        if self._file is None or self._pid != os.getpid():
            self._file = pq.ParquetFile(self.path / "cells.parquet")
            self._pid = os.getpid()
            if self._file.metadata.num_row_groups != len(self.sections):
                raise DataError(f"{self.path / 'cells.parquet'}: {self._file.metadata.num_row_groups} row groups "
                                f"for {len(self.sections)} sections in the manifest; rerun preprocess")
        return self._file

    def section(self, name: str) -> Section:
        """Read one section alone (its row group); cached, least recently used dropped first."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        if name not in self._group:
            raise DataError(f"{self.path}: no section '{name}'; use one of {self.sections[:8]}")
        t = self._parquet().read_row_group(self._group[name],
                                           columns=["cell_id", "split", "x", "y", "z", "cell_type", "expression"])
        n = t.num_rows
        if self.validation_cells:
            split = t.column("split").combine_chunks()
            labels = np.asarray(split.dictionary.to_pylist(), dtype=object)
            self._is_val[name] = labels[split.indices.to_numpy(zero_copy_only=False)] == "val"
        expr = t.column("expression").combine_chunks().flatten().to_numpy().reshape(n, self.n_genes)
        pos = np.stack([t.column(c).to_numpy() for c in "xyz"[: self.dims]], axis=1).astype(np.float32)
        codes = np.full(n, -1, np.int64)
        ct = t.column("cell_type").combine_chunks()
        if self.cell_types and ct.null_count < n:
            lookup = np.array([self.cell_types.index(v) for v in ct.dictionary.to_pylist()], np.int64)
            idx = ct.indices.to_numpy(zero_copy_only=False)
            valid = ct.is_valid().to_numpy(zero_copy_only=False)
            codes[valid] = lookup[idx[valid].astype(np.int64)]
        sec = Section(name, np.ascontiguousarray(expr, np.float32), pos, codes,
                      t.column("cell_id").to_numpy(zero_copy_only=False), np.arange(n, dtype=np.int64))
        self._cache[name] = sec
        while len(self._cache) > 1 and sum(s.expression.nbytes for s in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return sec


    def part(self, name: str, split: Split) -> Section:
        """The cells of section ``name`` that belong to ``split``: with validation cells, a training section's
        'train' part leaves them out and its 'val' part is them alone; otherwise the whole section."""
        sec = self.section(name)
        if not self.validation_cells or split == "test":
            return sec
        is_val = self._is_val[name]
        return sec.take(np.flatnonzero(is_val if split == "val" else ~is_val))


def collate(sections: list[Section]) -> Batch:
    """Pad to the largest example; zeros and mask False in padding, index -1 (cell types stay in Section:
    no batch consumer reads them)."""
    b, n = len(sections), max(len(s) for s in sections)
    g, d = sections[0].expression.shape[1], sections[0].positions.shape[1]
    expr, pos = np.zeros((b, n, g), np.float32), np.zeros((b, n, d), np.float32)
    mask = np.zeros((b, n), bool)
    idx = np.full((b, n), -1, np.int64)
    for i, s in enumerate(sections):
        k = len(s)
        expr[i, :k], pos[i, :k], mask[i, :k], idx[i, :k] = s.expression, s.positions, True, s.index
    return Batch(torch.from_numpy(expr), torch.from_numpy(pos), torch.from_numpy(mask), torch.from_numpy(idx),
                 [s.name for s in sections], [len(s) for s in sections])


def crop(sec: Section, max_cells: int, mode: Literal["contiguous", "random", "mixed"], rng: np.random.Generator) -> Section:
    """At most ``max_cells`` cells: the k nearest to a random seed cell (contiguous) or a random subset."""
    n = len(sec)
    if n <= max_cells:
        return sec
    if mode == "mixed":
        mode = "contiguous" if rng.random() < 0.5 else "random"
    if mode == "contiguous":
        seed = int(rng.integers(n))
        d2 = ((sec.positions - sec.positions[seed]) ** 2).sum(axis=1)
        rows = np.sort(np.argpartition(d2, max_cells - 1)[:max_cells])
    else:
        rows = np.sort(rng.choice(n, max_cells, replace=False))
    return sec.take(rows)


def augment(sec: Section, rotate: bool, reflect: bool, rng: np.random.Generator) -> Section:
    """Rotate (and reflect) the coordinates, then re-centre them over the section's cells."""
    pos = sec.positions
    if rotate or reflect:
        if rotate:
            q = random_orthogonal(pos.shape[1], rng, reflect).astype(np.float32)
        else:
            q = np.eye(pos.shape[1], dtype=np.float32)
            q[0, 0] = -1.0 if rng.random() < 0.5 else 1.0
        pos = pos @ q.T
    pos = (pos - pos.mean(axis=0, dtype=np.float64).astype(np.float32)).astype(np.float32)
    return Section(sec.name, sec.expression, pos, sec.cell_type, sec.cell_ids, sec.index)


def training_batch(data: ProcessedData, cfg: DataConfig, batch_size: int, seed: int, step: int,
                   rank: int = 0, world_size: int = 1) -> Batch:
    """The batch of ``rank`` at ``step``: a pure function of (seed, step, rank, world_size, batch_size).

    The global batch (batch_size x world_size examples) walks through seeded per-epoch permutations of the
    training sections, so every section is seen equally often; rank r takes its slice. Each example has its
    own generator keyed by its global position, so the union over ranks does not depend on world_size.
    """
    train = data.splits["train"]
    if not train:
        raise DataError(f"{data.path}: no training section; rerun preprocess with a split that keeps one")
    global_size = batch_size * world_size
    examples = []
    for j in range(rank * batch_size, (rank + 1) * batch_size):
        k = step * global_size + j  # global example counter
        epoch, pos = divmod(k, len(train))
        order = np.random.default_rng([seed, 1, epoch]).permutation(len(train))
        rng = np.random.default_rng([seed, 2, k])
        sec = crop(data.part(train[order[pos]], "train"), cfg.max_cells, cfg.crop, rng)
        examples.append(augment(sec, cfg.rotate, cfg.reflect, rng))
    return collate(examples)


class TrainingBatches(torch.utils.data.IterableDataset):
    """Batches for steps start_step, start_step+1, ...; use with ``DataLoader(ds, batch_size=None)``.

    With W workers, worker w produces steps start_step + w, + w + W, ...; DataLoader takes one batch from
    each worker in turn, so the stream stays in step order and matches ``training_batch`` exactly.
    """

    def __init__(self, data: ProcessedData, cfg: DataConfig, batch_size: int, seed: int, start_step: int = 0,
                 max_steps: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.data, self.cfg, self.batch_size, self.seed = data, cfg, batch_size, seed
        self.start_step, self.max_steps, self.rank, self.world_size = start_step, max_steps, rank, world_size

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + wid
        while self.max_steps is None or step < self.max_steps:
            yield training_batch(self.data, self.cfg, self.batch_size, self.seed, step, self.rank, self.world_size)
            step += nw


def eval_batches(data: ProcessedData, split: Split, batch_size: int = 1) -> Iterator[Batch]:
    """Whole sections of ``split`` in manifest order, no augmentation, ``batch_size`` sections per batch."""
    names = data.splits[split]
    for i in range(0, len(names), batch_size):
        yield collate([data.part(s, split) for s in names[i : i + batch_size]])


def undo_normalization(expression: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """Model-space expression -> the (log-)normalised scale: x * gene_std + gene_mean."""
    norm = manifest["normalization"]
    return expression * np.asarray(norm["gene_std"], np.float32) + np.asarray(norm["gene_mean"], np.float32)


def original_positions(positions: np.ndarray, section: str, manifest: dict[str, Any]) -> np.ndarray:
    """Model-space coordinates of a whole section -> original units: x * scale + centre."""
    c = manifest["coordinates"]
    d = positions.shape[-1]
    return positions * c["scale"] + np.asarray(c["centers"][section][:d])
