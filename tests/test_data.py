"""Loading: padding masks, step-keyed training batches, crops, rotations, evaluation order, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from alphastomics.artifacts import DataError
from alphastomics.config import DataConfig
from alphastomics.data.batches import (
    ProcessedData,
    Section,
    TrainingBatches,
    augment,
    collate,
    crop,
    eval_batches,
    training_batch,
)

CFG = DataConfig(max_cells=64, crop="mixed")


def _section(n: int, g: int = 3, d: int = 2, name: str = "s") -> Section:
    rng = np.random.default_rng(n)
    return Section(name, rng.normal(size=(n, g)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32),
                   rng.integers(0, 3, n), np.array([f"c{i}" for i in range(n)]), np.arange(n))


def test_collate_pads_with_zeros_and_masks_padding() -> None:
    secs = [_section(5), _section(2), _section(4)]
    b = collate(secs)
    assert b.expression.shape == (3, 5, 3) and b.positions.shape == (3, 5, 2) and b.mask.dtype == torch.bool
    assert b.mask.sum(1).tolist() == [5, 2, 4]
    for i, s in enumerate(secs):
        n = len(s)
        assert b.mask[i, :n].all() and not b.mask[i, n:].any()
        assert torch.equal(b.expression[i, :n], torch.from_numpy(s.expression))
        assert (b.expression[i, n:] == 0).all() and (b.positions[i, n:] == 0).all()
        assert (b.index[i, n:] == -1).all()
    assert b.sections == ["s", "s", "s"]


def test_training_batch_depends_only_on_seed_and_step(tiny_processed: Path) -> None:
    data = ProcessedData(tiny_processed)
    a = training_batch(data, CFG, 3, seed=1, step=4)
    b = training_batch(ProcessedData(tiny_processed), CFG, 3, seed=1, step=4)  # fresh object, empty cache
    for k in ("expression", "positions", "mask", "index"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    assert a.sections == b.sections
    c = training_batch(data, CFG, 3, seed=1, step=5)
    d = training_batch(data, CFG, 3, seed=2, step=4)
    assert not torch.equal(a.positions, c.positions) and not torch.equal(a.positions, d.positions)
    assert set(a.sections) <= set(data.splits["train"])
    assert a.mask.sum(1).max() <= CFG.max_cells


def test_ranks_split_the_global_batch(tiny_processed: Path) -> None:
    data = ProcessedData(tiny_processed)
    whole = training_batch(data, CFG, 4, seed=0, step=3, rank=0, world_size=1)
    parts = [training_batch(data, CFG, 2, seed=0, step=3, rank=r, world_size=2) for r in (0, 1)]
    assert parts[0].sections + parts[1].sections == whole.sections
    for i, p in enumerate(parts):
        n = p.mask.shape[1]
        assert torch.equal(p.positions, whole.positions[2 * i : 2 * i + 2, :n])


def test_every_training_section_is_seen_equally_often(tiny_processed: Path) -> None:
    data = ProcessedData(tiny_processed)
    n_train = len(data.splits["train"])
    seen = [s for step in range(n_train) for s in training_batch(data, CFG, 1, 0, step).sections]
    assert sorted(seen) == sorted(data.splits["train"])


def test_training_batches_resume_and_workers_match_training_batch(tiny_processed: Path) -> None:
    data = ProcessedData(tiny_processed)
    ds = TrainingBatches(data, CFG, 2, seed=0, start_step=5, max_steps=9)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = list(loader)
    assert len(got) == 4
    for i, b in enumerate(got):
        assert torch.equal(b.positions, training_batch(data, CFG, 2, 0, 5 + i).positions)


def test_rotation_keeps_pairwise_distances_and_recentres(tiny_processed_3d: Path) -> None:
    data = ProcessedData(tiny_processed_3d)
    sec = data.section(data.splits["train"][0])
    shifted = Section(sec.name, sec.expression, sec.positions + 5.0, sec.cell_type, sec.cell_ids, sec.index)
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = augment(shifted, rotate=True, reflect=True, rng=rng)
        np.testing.assert_allclose(pdist(out.positions), pdist(sec.positions), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.positions.mean(0), 0, atol=1e-5)
    assert not np.allclose(out.positions, sec.positions)


def test_contiguous_crop_is_the_k_nearest_cells_of_a_seed_cell() -> None:
    sec = _section(200)
    out = crop(sec, 50, "contiguous", np.random.default_rng(3))
    seed = int(np.random.default_rng(3).integers(200))  # the crop's first draw
    d = np.linalg.norm(sec.positions - sec.positions[seed], axis=1)
    assert sorted(out.index) == sorted(np.argsort(d)[:50].tolist())
    rand = crop(sec, 50, "random", np.random.default_rng(3))
    assert len(rand) == 50 and len(set(rand.index)) == 50
    assert crop(sec, 500, "random", np.random.default_rng(3)) is sec


def test_eval_batches_are_whole_sections_in_manifest_order(tiny_processed: Path) -> None:
    data = ProcessedData(tiny_processed)
    manifest = json.loads((tiny_processed / "manifest.json").read_text())
    for split in ("val", "test"):
        batches = list(eval_batches(data, split))
        assert [b.sections[0] for b in batches] == manifest["splits"][split]
        for b in batches:
            assert int(b.mask.sum()) == manifest["cells_per_section"][b.sections[0]]
            assert b.index[0].tolist() == list(range(b.mask.shape[1]))
    two = next(eval_batches(data, "train", batch_size=2))
    assert two.sections == manifest["splits"]["train"][:2]


def test_cache_is_bounded_and_reads_one_section_at_a_time(tiny_processed: Path) -> None:
    data = ProcessedData(tiny_processed, cache_bytes=1)
    a = data.section(data.sections[0])
    assert data.section(data.sections[0]) is a
    data.section(data.sections[1])
    assert list(data._cache) == [data.sections[1]]
    with pytest.raises(DataError, match="no section 'nope'"):
        data.section("nope")


def test_bad_processed_folder(tmp_path: Path, tiny_processed: Path) -> None:
    with pytest.raises(DataError, match="run `python -m alphastomics preprocess`"):
        ProcessedData(tmp_path)
    (tmp_path / "cells.parquet").write_bytes((tiny_processed / "cells.parquet").read_bytes())
    manifest = json.loads((tiny_processed / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(DataError, match="format is 99"):
        ProcessedData(tmp_path)


# ---------------------------------------------------------------------------------------------- test size


def _shipped_config(dataset: str, tmp_path: Path):
    """config/model.yaml + the data set block and overrides of config/config.yaml (the workflow's order)."""
    import yaml

    from alphastomics import plan as plan_module
    from alphastomics.config import load_config

    repo = Path(__file__).resolve().parents[1]
    plan = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    return load_config([repo / plan["model_config"]], plan_module.set_items(*plan_module.run_blocks(plan, dataset, None)))


def _assert_trains_on_whole_sections(proc: Path, cfg) -> None:
    data = ProcessedData(proc)
    sizes = data.manifest["cells_per_section"]
    # Every section, held-out ones included, fits in one training example...
    assert cfg.data.max_cells >= max(sizes.values())
    # ...so a training example is a whole training section (every cell, in order), only rotated.
    for step in range(3):
        batch = training_batch(data, cfg.data, cfg.training.batch_size, seed=0, step=step)
        for i, name in enumerate(batch.sections):
            n = sizes[name]
            assert int(batch.mask[i].sum()) == n
            assert batch.index[i, :n].tolist() == list(range(n))


def test_shipped_config_trains_bdtnp_at_the_test_size(bdtnp_processed: Path, tmp_path: Path) -> None:
    _assert_trains_on_whole_sections(bdtnp_processed, _shipped_config("bdtnp", tmp_path))


def test_shipped_config_trains_synthetic_at_the_test_size(tmp_path: Path) -> None:
    from alphastomics.data.fetch import fetch_synthetic
    from alphastomics.data.preprocess import preprocess

    cfg = _shipped_config("synthetic", tmp_path)
    fetch_synthetic(tmp_path / "raw", cfg.dataset.synthetic)
    preprocess(tmp_path / "raw", cfg.dataset, tmp_path / "processed")
    _assert_trains_on_whole_sections(tmp_path / "processed", cfg)
    # One section per step: a step holds about as many cells as a bdtnp step of 4 slabs.
    assert cfg.training.batch_size == 1
