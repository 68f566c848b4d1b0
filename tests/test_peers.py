"""Peer baselines (alphastomics/peers.py): one finite position per held-out cell, the samples format of the
sample stage, hand-computed kNN cases, mapping methods landing on reference locations, the missing-dependency
message, and nothing half-written on failure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alphastomics import AlphaSTomicsError
from alphastomics import peers
from alphastomics.__main__ import main as cli

SAMPLE_COLUMNS = ["cell_id", "section", "cell_type", "x_true", "y_true", "z_true", "x_pred", "y_pred", "z_pred"]


def write_processed(folder: Path, *, dims: int = 2, cells: int = 40, genes: int = 10, seed: int = 0) -> Path:
    """A tiny processed folder in the format of docs/architecture.md: sections s0..s3 (s0, s1 train, s2 val,
    s3 test), expression a smooth non-negative function of the position in the section, plus noise."""
    rng = np.random.default_rng(seed)
    names = ["s0", "s1", "s2", "s3"]
    split_of = {"s0": "train", "s1": "train", "s2": "val", "s3": "test"}
    freq = rng.normal(size=(genes, dims))
    rows = []
    for k, name in enumerate(names):
        local = rng.uniform(-1.0, 1.0, size=(cells, dims)) * np.array([10.0, 5.0, 4.0][:dims])
        expr = np.log1p(np.exp(np.sin(local @ freq.T / 4.0) + 0.1 * rng.normal(size=(cells, genes))))
        offset = np.array([100.0 * k, -20.0 * k, 7.0 * k][:dims])
        for i in range(cells):
            rows.append((f"{name}_{i}", name, split_of[name], local[i] + offset, expr[i], f"t{i % 3}"))
    sec = np.array([r[1] for r in rows])
    spl = np.array([r[2] for r in rows])
    pos = np.stack([r[3] for r in rows])
    log_expr = np.stack([r[4] for r in rows])
    train = spl == "train"
    mean, std = log_expr[train].mean(0), log_expr[train].std(0)
    centers = {n: pos[sec == n].mean(0) for n in names}
    centred = pos - np.stack([centers[s] for s in sec])
    scale = float(np.sqrt((centred[train] ** 2).sum(1).mean()))
    xyz = np.zeros((len(rows), 3), np.float32)
    xyz[:, :dims] = centred / scale
    stored = ((log_expr - mean) / std).astype(np.float32)
    table = pa.table({
        "cell_id": pa.array([r[0] for r in rows]),
        "section": pa.array(sec).dictionary_encode(),
        "split": pa.array(spl).dictionary_encode(),
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "cell_type": pa.array([r[5] for r in rows]).dictionary_encode(),
        "expression": pa.FixedSizeListArray.from_arrays(pa.array(stored.ravel()), genes),
    })
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "cells.parquet", compression="zstd")
    manifest = {
        "format": 1, "dataset": "tiny", "genes": [f"g{j}" for j in range(genes)], "n_genes": genes,
        "dims": dims, "n_cells": len(rows),
        "splits": {s: [n for n in names if split_of[n] == s] for s in ("train", "val", "test")},
        "cells_per_section": {n: cells for n in names}, "cell_types": ["t0", "t1", "t2"],
        "normalization": {"input": "normalized", "applied": "none", "target_sum": None,
                          "gene_mean": mean.tolist(), "gene_std": std.tolist()},
        "coordinates": {"scale": scale, "centers": {n: list(c) + [0.0] * (3 - dims) for n, c in centers.items()}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_processed(tmp_path / "proc")


@pytest.fixture
def tiny3d(tmp_path: Path) -> Path:
    return write_processed(tmp_path / "proc3d", dims=3)


def _test_rows(proc: Path) -> pa.Table:
    cells = pq.read_table(proc / "cells.parquet")
    return cells.filter(pa.compute.equal(cells["split"].cast(pa.string()), "test"))


def _pred(table: pa.Table) -> np.ndarray:
    return np.stack([table[c].to_numpy() for c in ("x_pred", "y_pred", "z_pred")], axis=1)


def _true(table: pa.Table) -> np.ndarray:
    return np.stack([table[c].to_numpy() for c in ("x_true", "y_true", "z_true")], axis=1)


# ------------------------------------------------------------------------------------------------- knn


def test_knn_one_finite_position_per_held_out_cell_in_original_units(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "samples.parquet"
    assert cli(["baseline", "--method", "knn", "--data_dir", str(tiny), "--out", str(out)]) == 0
    table = pq.read_table(out)
    rows = _test_rows(tiny)
    assert table.column_names == SAMPLE_COLUMNS
    assert table["cell_id"].to_pylist() == rows["cell_id"].to_pylist()
    assert np.all(np.isfinite(_pred(table)))
    assert np.all(_pred(table)[:, 2] == 0.0) and np.all(_true(table)[:, 2] == 0.0)  # 2D data: z = 0
    manifest = json.loads((tiny / "manifest.json").read_text())
    scale, center = manifest["coordinates"]["scale"], np.array(manifest["coordinates"]["centers"]["s3"])
    stored = np.stack([rows[a].to_numpy() for a in "xyz"], axis=1).astype(np.float64)
    np.testing.assert_allclose(_true(table), stored * scale + center, rtol=1e-6)
    assert table["cell_type"].to_pylist() == rows["cell_type"].cast(pa.string()).to_pylist()
    # the predictions sit in the held-out section's frame (its centre), not in a training section's
    assert np.linalg.norm(_pred(table).mean(0)[:2] - center[:2]) < 0.5 * scale


def test_samples_schema_and_metadata_match_the_sample_stage(tiny: Path, tmp_path: Path) -> None:
    table = peers.run("knn", tiny, tmp_path / "s.parquet", seed=3)
    schema = pq.read_schema(tmp_path / "s.parquet")
    assert [schema.field(c).type for c in SAMPLE_COLUMNS] == [pa.string()] * 3 + [pa.float64()] * 6
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["alphastomics.method"] == "knn" and meta["alphastomics.mode"] == "expr_to_pos"
    assert json.loads(meta["alphastomics.genes"]) == [f"g{j}" for j in range(10)]
    assert meta["alphastomics.split"] == "test" and meta["alphastomics.seed"] == "3"
    assert float(meta["alphastomics.wall_time_s"]) >= 0.0
    assert json.loads(meta["alphastomics.settings"]) == {"knn_k": 5, "knn_weights": "uniform"}
    assert table.num_rows == 40


def test_knn_k1_places_a_copied_cell_on_its_reference_cell(tiny: Path) -> None:
    data, held, _ = peers.load(tiny)
    # A query cell whose expression equals reference cell j is placed exactly at j's centred position.
    j = 7
    query = data.query_expression.copy()
    query[0] = data.ref_expression[j]
    copied = peers.PeerData(data.ref_expression, data.ref_log_expression, data.ref_positions, query,
                            data.query_log_expression, data.genes, data.scale)
    pred = peers.predict("knn", copied, settings=peers.PeerSettings(knn_k=1))
    np.testing.assert_allclose(pred[0], data.ref_positions[j])


def test_knn_with_every_reference_cell_predicts_the_reference_mean(tiny: Path) -> None:
    data, _, _ = peers.load(tiny)
    k = len(data.ref_positions)
    pred = peers.predict("knn", data, settings=peers.PeerSettings(knn_k=k + 10))  # k is capped at R
    np.testing.assert_allclose(pred, np.broadcast_to(data.ref_positions.mean(0), pred.shape), atol=1e-12)


def test_val_split_and_an_empty_split(tiny: Path, tmp_path: Path) -> None:
    table = peers.run("knn", tiny, tmp_path / "val.parquet", split="val")
    assert set(table["section"].to_pylist()) == {"s2"}
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["splits"]["val"] = []
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(peers.PeerError, match=r"manifest.json: splits.val has no sections"):
        peers.run("knn", tiny, tmp_path / "none.parquet", split="val")
    assert not (tmp_path / "none.parquet").exists()


def test_missing_processed_data_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AlphaSTomicsError, match=r"manifest.json: not found; pass the folder written by"):
        peers.run("knn", tmp_path / "nowhere", tmp_path / "s.parquet")


def test_a_failing_method_leaves_nothing_behind(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(*_):
        return np.full((40, 2), np.nan)

    monkeypatch.setitem(peers.PREDICT, "knn", broken)
    out = tmp_path / "run" / "samples.parquet"
    with pytest.raises(peers.PeerError, match="non-finite"):
        peers.run("knn", tiny, out)
    assert not out.exists() and not list(out.parent.glob("*")) if out.parent.exists() else True


# ------------------------------------------------------------------------------- optional dependencies


@pytest.mark.parametrize("method", ["tangram", "novosparc", "celery"])
def test_missing_optional_package_names_the_extra(method: str, tiny: Path, tmp_path: Path, monkeypatch,
                                                  capsys) -> None:
    module = peers.OPTIONAL[method][0]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    out = tmp_path / "s.parquet"
    rc = cli(["baseline", "--method", method, "--data_dir", str(tiny), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 0
    assert f"pip install 'alphastomics[{method}]'" in err and f"--method {method}" in err
    assert not peers.available(method) and peers.available("knn")
    # the default peer still runs without it
    assert cli(["baseline", "--method", "knn", "--data_dir", str(tiny), "--out", str(out)]) == 0


FAST = peers.PeerSettings(tangram_epochs=50, celery_epochs=3)


def _skip_unless(method: str) -> None:
    if not peers.available(method):
        pkg, extra = peers.OPTIONAL[method][1], peers.OPTIONAL[method][2]
        pytest.skip(f"optional peer '{pkg}' not installed (pip install 'alphastomics[{extra}]')")


@pytest.mark.parametrize("method", ["tangram", "novosparc"])
def test_mapping_peers_place_each_cell_on_a_reference_location(method: str, tiny: Path, tmp_path: Path) -> None:
    _skip_unless(method)
    table = peers.run(method, tiny, tmp_path / "s.parquet", settings=FAST)
    assert table.num_rows == 40 and np.all(np.isfinite(_pred(table)))
    data, held, _ = peers.load(tiny)
    model_space = (_pred(table)[:, :2] - held.centers[:, :2]) / data.scale
    gap = np.min(np.linalg.norm(model_space[:, None, :] - data.ref_positions[None], axis=2), axis=1)
    assert np.all(gap < 1e-9)  # mapping methods can only place cells at reference locations


def test_tangram_is_seeded(tiny: Path, tmp_path: Path) -> None:
    _skip_unless("tangram")
    a = peers.run("tangram", tiny, tmp_path / "a.parquet", seed=1, settings=FAST)
    b = peers.run("tangram", tiny, tmp_path / "b.parquet", seed=1, settings=FAST)
    np.testing.assert_array_equal(_pred(a), _pred(b))


@pytest.mark.parametrize("dims", [2, 3])
def test_celery_one_finite_position_per_cell_inside_the_reference_range(dims: int, tmp_path: Path) -> None:
    _skip_unless("celery")
    proc = write_processed(tmp_path / f"proc{dims}", dims=dims, cells=24)
    table = peers.run("celery", proc, tmp_path / "s.parquet", settings=FAST)
    data, held, _ = peers.load(proc)
    model_space = (_pred(table)[:, :dims] - held.centers[:, :dims]) / data.scale
    assert table.num_rows == 24 and np.all(np.isfinite(model_space))
    # CeLEry's sigmoid output maps into the reference range padded by 1 original unit on each side
    pad = 1.0 / data.scale + 1e-9
    assert np.all(model_space >= data.ref_positions.min(0) - pad)
    assert np.all(model_space <= data.ref_positions.max(0) + pad)
    if dims == 2:
        assert np.all(_pred(table)[:, 2] == 0.0)


def test_settings_from_a_config_section_keeps_unknown_fields_default() -> None:
    class Section:
        knn_k = 9
        other = "ignored"

    s = peers.settings_from(Section())
    assert s.knn_k == 9 and s.tangram_epochs == peers.PeerSettings().tangram_epochs
    assert peers.settings_from(None) == peers.PeerSettings()
