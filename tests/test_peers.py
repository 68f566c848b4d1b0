"""Peer baselines (alphastomics/evaluation/peers.py): one finite position per held-out cell, the samples format of the
sample stage, hand-computed kNN cases, mapping methods landing on reference locations, the missing-dependency
message, and nothing half-written on failure."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from alphastomics import AlphaSTomicsError
from alphastomics.__main__ import main as cli
from alphastomics.config import PeersConfig
from alphastomics.evaluation import peers

SAMPLE_COLUMNS = [
    "cell_id",
    "section",
    "cell_type",
    "x_true",
    "y_true",
    "z_true",
    "x_pred",
    "y_pred",
    "z_pred",
]


def _copy(proc: Path, tmp_path: Path) -> Path:
    """A private copy of a session fixture folder, for tests that edit it."""
    return Path(shutil.copytree(proc, tmp_path / "proc"))


def _manifest(proc: Path) -> dict:
    return json.loads((proc / "manifest.json").read_text())


def _test_rows(proc: Path) -> pa.Table:
    cells = pq.read_table(proc / "cells.parquet")
    return cells.filter(pc.equal(cells["split"].cast(pa.string()), "test"))


def _pred(table: pa.Table) -> np.ndarray:
    return np.stack([table[c].to_numpy() for c in ("x_pred", "y_pred", "z_pred")], axis=1)


def _true(table: pa.Table) -> np.ndarray:
    return np.stack([table[c].to_numpy() for c in ("x_true", "y_true", "z_true")], axis=1)


# ------------------------------------------------------------------------------------------------- knn


def test_knn_one_finite_position_per_held_out_cell_in_original_units(
    tiny_processed: Path, tmp_path: Path
) -> None:
    proc = tiny_processed
    out = tmp_path / "run" / "samples.parquet"
    assert cli(["baseline", "--method", "knn", "--data_dir", str(proc), "--out", str(out)]) == 0
    table = pq.read_table(out)
    rows = _test_rows(proc)
    assert table.column_names == SAMPLE_COLUMNS
    assert table["cell_id"].to_pylist() == rows["cell_id"].to_pylist()
    assert np.all(np.isfinite(_pred(table)))
    assert np.all(_pred(table)[:, 2] == 0.0) and np.all(_true(table)[:, 2] == 0.0)  # 2D data: z = 0
    manifest = _manifest(proc)
    (section,) = manifest["splits"]["test"]
    scale, center = manifest["coordinates"]["scale"], np.array(manifest["coordinates"]["centers"][section])
    stored = np.stack([rows[a].to_numpy() for a in "xyz"], axis=1).astype(np.float64)
    np.testing.assert_allclose(_true(table), stored * scale + center, rtol=1e-6)
    assert table["cell_type"].to_pylist() == rows["cell_type"].cast(pa.string()).to_pylist()
    # the predictions sit in the held-out section's frame (around its centre), not in a training section's
    assert np.linalg.norm(_pred(table).mean(0)[:2] - center[:2]) < 0.5 * scale


def test_samples_schema_metadata_and_evaluate(tiny_processed: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples.parquet"
    table = peers.run("knn", tiny_processed, out, seed=3)
    schema = pq.read_schema(out)
    assert [schema.field(c).type for c in SAMPLE_COLUMNS] == [pa.string()] * 3 + [pa.float64()] * 6
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["alphastomics.method"] == "knn" and meta["alphastomics.mode"] == "expr_to_pos"
    assert json.loads(meta["alphastomics.genes"]) == _manifest(tiny_processed)["genes"]
    assert meta["alphastomics.split"] == "test" and meta["alphastomics.seed"] == "3"
    assert float(meta["alphastomics.wall_time_s"]) >= 0.0
    assert json.loads(meta["alphastomics.settings"]) == {"knn_k": 5, "knn_weights": "uniform"}
    # the same evaluate stage scores it, unchanged
    assert (
        cli(
            [
                "evaluate",
                "--samples",
                str(out),
                "--data_dir",
                str(tiny_processed),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["method"] == "knn" and metrics["mode"] == "expr_to_pos"
    assert metrics["n_cells"] == table.num_rows == _test_rows(tiny_processed).num_rows
    # a peer has no training run: its fit + predict time is its cost
    assert metrics["cost"]["wall_time_s"] == float(meta["alphastomics.wall_time_s"])


def _with_query(data: peers.PeerData, query: np.ndarray) -> peers.PeerData:
    return peers.PeerData(
        data.ref_expression,
        data.ref_log_expression,
        data.ref_positions,
        query,
        data.query_log_expression,
        data.genes,
        data.scale,
    )


def test_knn_k1_places_a_copied_cell_on_its_reference_cell(tiny_processed: Path) -> None:
    data, _, _ = peers.load(tiny_processed)
    # A query cell whose expression equals reference cell j is placed exactly at j's centred position.
    j = 7
    query = data.query_expression.copy()
    query[0] = data.ref_expression[j]
    pred = peers.predict("knn", _with_query(data, query), settings=PeersConfig(knn_k=1))
    np.testing.assert_allclose(pred[0], data.ref_positions[j])


def test_knn_with_every_reference_cell_predicts_the_reference_mean(tiny_processed: Path) -> None:
    data, _, _ = peers.load(tiny_processed)
    k = len(data.ref_positions)
    pred = peers.predict("knn", data, settings=PeersConfig(knn_k=k + 10))  # k is capped at R
    np.testing.assert_allclose(pred, np.broadcast_to(data.ref_positions.mean(0), pred.shape), atol=1e-12)


def test_val_split_and_an_empty_split(tiny_processed: Path, tmp_path: Path) -> None:
    proc = _copy(tiny_processed, tmp_path)
    manifest = _manifest(proc)
    table = peers.run("knn", proc, tmp_path / "val.parquet", split="val")
    assert set(table["section"].to_pylist()) == set(manifest["splits"]["val"])
    manifest["splits"]["val"] = []
    (proc / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(peers.PeerError, match=r"manifest.json: splits.val has no sections"):
        peers.run("knn", proc, tmp_path / "none.parquet", split="val")
    assert not (tmp_path / "none.parquet").exists()


def test_missing_processed_data_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AlphaSTomicsError, match=r"manifest.json or cells.parquet missing"):
        peers.run("knn", tmp_path / "nowhere", tmp_path / "s.parquet")


def test_a_failing_method_leaves_nothing_behind(tiny_processed: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(data, seed, settings):
        return np.full((len(data.query_expression), 2), np.nan)

    monkeypatch.setitem(peers.PREDICT, "knn", broken)
    out = tmp_path / "run" / "samples.parquet"
    out.parent.mkdir()
    with pytest.raises(peers.PeerError, match="non-finite"):
        peers.run("knn", tiny_processed, out)
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------- optional dependencies


@pytest.mark.parametrize("method", ["tangram", "novosparc", "celery"])
def test_missing_optional_package_names_the_extra(
    method: str, tiny_processed: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    module = peers.OPTIONAL[method][0]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    out = tmp_path / "s.parquet"
    rc = cli(["baseline", "--method", method, "--data_dir", str(tiny_processed), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 0
    assert f"pip install 'alphastomics[{method}]'" in err and f"--method {method}" in err
    assert not peers.available(method) and peers.available("knn")
    # the default peer still runs without it
    assert cli(["baseline", "--method", "knn", "--data_dir", str(tiny_processed), "--out", str(out)]) == 0


FAST = PeersConfig(tangram_epochs=50, celery_epochs=2)


def _skip_unless(method: str) -> None:
    if not peers.available(method):
        pkg, extra = peers.OPTIONAL[method][1], peers.OPTIONAL[method][2]
        pytest.skip(f"optional peer '{pkg}' not installed (pip install 'alphastomics[{extra}]')")


def _model_space(table: pa.Table, held: peers.HeldOut, data: peers.PeerData, dims: int) -> np.ndarray:
    return (_pred(table)[:, :dims] - held.centers[:, :dims]) / data.scale


@pytest.mark.parametrize("method", ["tangram", "novosparc"])
def test_mapping_peers_place_each_cell_on_a_reference_location(
    method: str, tiny_processed: Path, tmp_path: Path
) -> None:
    _skip_unless(method)
    table = peers.run(method, tiny_processed, tmp_path / "s.parquet", seed=1, settings=FAST)
    data, held, _ = peers.load(tiny_processed)
    assert table.num_rows == len(data.query_expression) and np.all(np.isfinite(_pred(table)))
    model_space = _model_space(table, held, data, 2)
    gap = np.min(np.linalg.norm(model_space[:, None, :] - data.ref_positions[None], axis=2), axis=1)
    assert np.all(gap < 1e-9)  # mapping methods can only place cells at reference locations
    # seeded (tangram: random_state; novosparc: deterministic): a second run gives the same placement, also
    # for seed 0, which tangram's own `if random_state:` leaves unseeded
    again = peers.run(method, tiny_processed, tmp_path / "again.parquet", seed=1, settings=FAST)
    np.testing.assert_array_equal(_pred(again), _pred(table))
    zero = [_pred(peers.run(method, tiny_processed, tmp_path / f"zero{i}.parquet", seed=0, settings=FAST))
            for i in range(2)]
    np.testing.assert_array_equal(zero[0], zero[1])


@pytest.mark.parametrize("fixture", ["tiny_processed", "tiny_processed_3d"])
def test_celery_one_finite_position_per_cell_inside_the_reference_range(
    fixture: str, request, tmp_path: Path
) -> None:
    _skip_unless("celery")
    proc = request.getfixturevalue(fixture)
    table = peers.run("celery", proc, tmp_path / "s.parquet", settings=FAST)
    data, held, _ = peers.load(proc)
    dims = data.ref_positions.shape[1]
    model_space = _model_space(table, held, data, dims)
    assert table.num_rows == len(data.query_expression) and np.all(np.isfinite(model_space))
    # CeLEry's sigmoid output maps into the reference range padded by 1 original unit on each side
    pad = 1.0 / data.scale + 1e-9
    assert np.all(model_space >= data.ref_positions.min(0) - pad)
    assert np.all(model_space <= data.ref_positions.max(0) + pad)
    if dims == 2:
        assert np.all(_pred(table)[:, 2] == 0.0)


def test_peer_settings_come_from_the_config_section(tiny_processed, tmp_path) -> None:
    from alphastomics.config import load_config

    cfg = load_config(overrides=["peers.knn_k=9"])
    assert cfg.peers.knn_k == 9 and cfg.peers.tangram_epochs == PeersConfig().tangram_epochs
    table = peers.run("knn", tiny_processed, tmp_path / "s.parquet", settings=cfg.peers)
    assert json.loads(table.schema.metadata[b"alphastomics.settings"])["knn_k"] == 9


def test_workflow_skips_peers_that_are_not_installed(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tangram" else real(name, *a))
    kept, skipped = peers.runnable(["knn", "tangram"])
    assert kept == ["knn"]
    assert skipped == [
        "baseline 'tangram' skipped: its package is not installed "
        "(pip install -e '.[tangram]', or run the workflow with --sdm conda)"
    ]


# ------------------------------------------------------------------------------------------ common frame


def test_synthetic_training_sections_share_one_frame(synthetic_raw: Path, tiny_processed: Path) -> None:
    """The generator writes spatial = size * tissue_frame @ R.T + offset per section; peers undo R, so each
    pooled training section is a scaled copy of its tissue frame (x and y scaled alike, no rotation left)."""
    import anndata as ad

    from alphastomics.data.batches import ProcessedData

    data, _, manifest = peers.load(tiny_processed)
    raw = ad.read_h5ad(next(synthetic_raw.glob("*.h5ad")))
    proc = ProcessedData(tiny_processed)
    start = 0
    for name in manifest["splits"]["train"]:
        sec = proc.section(name)
        pooled = data.ref_positions[start : start + len(sec)]
        start += len(sec)
        frame = raw[list(sec.cell_ids)].obsm["tissue_frame"]
        frame = frame - frame.mean(0)
        fit, *_ = np.linalg.lstsq(frame, pooled, rcond=None)  # pooled ~ frame @ fit
        size = fit[0, 0]
        np.testing.assert_allclose(fit, size * np.eye(2), atol=1e-5)
        np.testing.assert_allclose(frame @ fit, pooled, atol=1e-5)
        # the stored section itself is rotated (else this test could not fail)
        stored, *_ = np.linalg.lstsq(frame, sec.positions.astype(np.float64), rcond=None)
        assert np.abs(stored - stored[0, 0] * np.eye(2)).max() > 1e-2
    assert start == len(data.ref_positions)


def test_measured_data_is_pooled_as_measured(tiny_processed: Path) -> None:
    manifest = _manifest(tiny_processed) | {"source": "bdtnp"}
    assert peers.common_frame(manifest, tiny_processed / "manifest.json") is None
    broken = _manifest(tiny_processed) | {"parameters": {}}
    with pytest.raises(peers.PeerError, match="parameters.synthetic"):
        peers.common_frame(broken, tiny_processed / "manifest.json")


def test_tangram_fits_on_genes_in_a_fixed_order(tiny_processed, tmp_path, monkeypatch) -> None:
    """tangram.pp_adatas orders the genes like a Python set (by the process's hash seed); the fit sums over
    them in that order, so two processes gave different maps. The genes reach the fit sorted."""
    _skip_unless("tangram")
    import tangram

    seen = []
    real = tangram.map_cells_to_space

    def spy(adata_sc, adata_sp, **kwargs):
        seen.append((list(adata_sc.uns["training_genes"]), list(adata_sp.uns["training_genes"])))
        return real(adata_sc, adata_sp, **kwargs)

    monkeypatch.setattr(tangram, "map_cells_to_space", spy)
    peers.run("tangram", tiny_processed, tmp_path / "s.parquet", seed=0, settings=FAST)
    (sc_genes, sp_genes), = seen
    assert sc_genes == sp_genes == sorted(sc_genes) and len(sc_genes) > 2


# ------------------------------------------------------------------------------------------- ceiling


def test_ceiling_places_each_cell_from_its_expression_neighbours_in_its_own_section_itself_left_out():
    # two sections of three cells; expression 1-D. Section a: cells 0, 1 alike, 2 apart; k = 1.
    expr = np.array([[0.0], [0.1], [5.0], [0.0], [3.0], [3.1]])
    pos = np.array([[0.0, 0.0], [1.0, 0.0], [9.0, 9.0], [-4.0, 4.0], [2.0, 2.0], [3.0, 3.0]])
    data = peers.PeerData(ref_expression=np.zeros((1, 1)), ref_log_expression=np.zeros((1, 1)),
                          ref_positions=np.zeros((1, 2)), query_expression=expr, query_log_expression=expr,
                          genes=["g"], scale=1.0, query_positions=pos,
                          query_sections=np.array(["a", "a", "a", "b", "b", "b"], dtype=object))
    out = peers.predict("ceiling", data, settings=PeersConfig(knn_k=1))
    # a: 0 <- 1, 1 <- 0, 2 <- its nearest in a (cell 1, expression 0.1); b: 3 <- 4 (3.0 nearer 0 than 3.1), 4 <- 5, 5 <- 4
    expected = pos[[1, 0, 1, 4, 5, 4]]
    np.testing.assert_allclose(out, expected)
    k2 = peers.predict("ceiling", data, settings=PeersConfig(knn_k=5))  # k capped at the section's other cells
    np.testing.assert_allclose(k2[0], pos[[1, 2]].mean(0))
