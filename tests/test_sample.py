"""The sample stage: one row per held-out cell, original units, seeded; clear errors on mismatched data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from alphastomics.__main__ import main as cli
from alphastomics.artifacts import DataError
from alphastomics.config import load_config
from alphastomics.data.raw import open_raw
from alphastomics.model.sample import sample
from alphastomics.training.train import train

TINY = [
    "TransformerLayer_setting.d_model=16", "TransformerLayer_setting.num_layers=1",
    "TransformerLayer_setting.num_heads=2", "TransformerLayer_setting.time_embed_dim=16",
    "data.max_cells=32", "diffusion.sampling_steps=3", "training.max_steps=3", "training.batch_size=1",
    "training.val_every=3", "training.val_batches=1", "training.log_every=3", "training.warmup_steps=1",
]



def _trained(root: Path, proc: Path, mode: str, extra: tuple[str, ...] = ()) -> Path:
    cfg = load_config(overrides=[*TINY, f"diffusion.mode={mode}", *extra])
    train(cfg, proc, root / mode)
    return root / mode / "final.pt"


@pytest.fixture(scope="module")
def checkpoints(tiny_processed, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sample")
    return {mode: _trained(root, tiny_processed, mode) for mode in ("joint", "expr_to_pos")}


def test_one_row_per_held_out_cell_in_original_units(checkpoints, tiny_processed, tmp_path):
    out = tmp_path / "samples.parquet"
    table = sample(checkpoints["joint"], tiny_processed, out)
    manifest = json.loads((tiny_processed / "manifest.json").read_text())
    cells = pq.read_table(tiny_processed / "cells.parquet").to_pandas()
    held_out = cells[cells["split"] == "test"]
    df = pq.read_table(out).to_pandas()
    expected = sum(manifest["cells_per_section"][s] for s in manifest["splits"]["test"])
    assert len(df) == expected == len(held_out)
    assert list(df["cell_id"]) == list(held_out["cell_id"])
    for col in ("x_true", "y_true", "z_true", "x_pred", "y_pred", "z_pred"):
        assert np.isfinite(df[col]).all()
    g = manifest["n_genes"]
    expr_true = np.stack(df["expression_true"].to_numpy())
    expr_pred = np.stack(df["expression_pred"].to_numpy())
    assert expr_true.shape == expr_pred.shape == (len(df), g) and np.isfinite(expr_pred).all()
    # standardisation undone: stored * std + mean
    stored = np.stack(held_out["expression"].to_numpy())
    norm = manifest["normalization"]
    np.testing.assert_allclose(expr_true, stored * np.array(norm["gene_std"]) + np.array(norm["gene_mean"]),
                               rtol=1e-5, atol=1e-5)
    # predicted coordinates sit around their section's centre, in the units of the raw data
    for section, part in df.groupby("section"):
        centre = manifest["coordinates"]["centers"][section]
        np.testing.assert_allclose(part[["x_pred", "y_pred"]].mean().to_numpy(), centre[:2], atol=1e-3)
    meta = table.schema.metadata
    assert meta[b"alphastomics.mode"] == b"joint"
    assert meta[b"alphastomics.method"] == b"gated_headwise"
    assert json.loads(meta[b"alphastomics.genes"]) == manifest["genes"]


def test_truth_coordinates_round_trip_to_the_raw_ones(checkpoints, tiny_processed, synthetic_raw, tiny_config,
                                                       tmp_path):
    df = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "s.parquet").to_pandas()
    raw = open_raw(synthetic_raw, tiny_config.dataset)
    coords = {cid: xy for sec in raw.sections for cid, xy in zip(sec.cell_ids, sec.coords)}
    expected = np.stack([coords[c] for c in df["cell_id"]])
    # float32 storage: equal up to float32 rounding of the centred, scaled values
    np.testing.assert_allclose(df[["x_true", "y_true"]].to_numpy(), expected, rtol=1e-6, atol=1e-4)
    assert (df["z_true"] == 0).all() and (df["z_pred"] == 0).all()


def test_expr_to_pos_writes_no_expression_and_is_seeded(checkpoints, tiny_processed, tmp_path):
    a = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "a.parquet")
    b = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "b.parquet")
    assert "expression_pred" not in a.column_names and "expression_true" not in a.column_names
    assert a.equals(b)
    cfg = load_config(overrides=["evaluation.seed=1"])
    c = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "c.parquet", cfg=cfg)
    assert not np.array_equal(a["x_pred"].to_numpy(), c["x_pred"].to_numpy())


def test_cli_spelling_and_split(checkpoints, tiny_processed, tmp_path):
    out = tmp_path / "val.parquet"
    rc = cli(["sample", "--checkpoint", str(checkpoints["expr_to_pos"]), "--data_dir", str(tiny_processed),
              "--out", str(out), "--split", "val"])
    assert rc == 0
    manifest = json.loads((tiny_processed / "manifest.json").read_text())
    assert set(pq.read_table(out)["section"].to_pylist()) == set(manifest["splits"]["val"])
    assert [p.name for p in tmp_path.iterdir()] == ["val.parquet"]  # no temporary file left


def test_other_genes_are_refused(checkpoints, tiny_processed, tmp_path, capsys):
    other = tmp_path / "proc"
    shutil.copytree(tiny_processed, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["genes"][3] = "renamed"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest\.json: genes differ .*'renamed'"):
        sample(checkpoints["joint"], other, tmp_path / "s.parquet")
    rc = cli(["sample", "--checkpoint", str(checkpoints["joint"]), "--data_dir", str(other),
              "--out", str(tmp_path / "s.parquet")])
    assert rc == 2 and "genes differ" in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()


def test_other_dims_are_refused(checkpoints, tiny_processed_3d, tmp_path):
    with pytest.raises(DataError, match=r"dims is 3 .* trained with dims 2"):
        sample(checkpoints["joint"], tiny_processed_3d, tmp_path / "s.parquet")


def test_missing_checkpoint_is_a_one_line_error(tiny_processed, tmp_path, capsys):
    rc = cli(["sample", "--checkpoint", str(tmp_path / "nope.pt"), "--data_dir", str(tiny_processed),
              "--out", str(tmp_path / "s.parquet")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err


def test_draws_have_their_own_seeds_and_draw_zero_is_the_single_draw(checkpoints, tiny_processed, tmp_path):
    one = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "one.parquet")
    cfg = load_config(overrides=["evaluation.sampling_draws=3", "diffusion.sampling_steps=3"])
    three = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "three.parquet", cfg=cfg)
    assert three.num_rows == 3 * one.num_rows
    draw = three["draw"].to_numpy()
    assert sorted(set(draw)) == [0, 1, 2]
    first = three.filter(pa.compute.equal(three["draw"], 0))
    np.testing.assert_array_equal(first["x_pred"].to_numpy(), one["x_pred"].to_numpy())
    x = [three.filter(pa.compute.equal(three["draw"], k))["x_pred"].to_numpy() for k in range(3)]
    assert not np.array_equal(x[0], x[1]) and not np.array_equal(x[1], x[2])


def test_a_sections_value_is_the_mean_over_its_draws(checkpoints, tiny_processed, tmp_path):
    from alphastomics.evaluation.evaluate import score

    cfg = load_config(overrides=["evaluation.sampling_draws=2", "diffusion.sampling_steps=3",
                                 "evaluation.num_random_references=1"])
    sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "s.parquet", cfg=cfg)
    result = score(tmp_path / "s.parquet", tiny_processed, cfg)
    for row in result["per_section"]:
        draws = [d for d in result["per_draw"] if d["section"] == row["section"]]
        assert [d["draw"] for d in draws] == [0, 1] and row["draws"] == 2
        assert row["knn_preservation"] == pytest.approx(np.mean([d["knn_preservation"] for d in draws]))


def test_mean_placement_recovers_a_configuration_from_rotated_reflected_noisy_draws():
    from alphastomics.data.synthetic import random_orthogonal
    from alphastomics.model.sample import mean_placement

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(50, 2))
    truth -= truth.mean(0)
    draws = [(truth + rng.normal(scale=0.3, size=truth.shape)) @ random_orthogonal(2, rng, True).T + rng.normal(size=2)
             for _ in range(16)]
    mean = mean_placement(draws)
    np.testing.assert_allclose(mean.mean(0), 0.0, atol=1e-12)

    def rmsd_after_alignment(p):
        p = p - p.mean(0)
        u, _, vt = np.linalg.svd(p.T @ truth)
        return np.sqrt(((p @ (u @ vt) - truth) ** 2).sum(1).mean())

    err, single = rmsd_after_alignment(mean), rmsd_after_alignment(draws[0])
    assert err < 0.12 < single  # noise sd 0.3 per draw: the mean of 16 has about a quarter of it
    same = mean_placement([truth + 5.0] * 3)
    np.testing.assert_allclose(same, truth, atol=1e-12)  # identical draws: the draw itself, centred


def test_placement_mean_writes_one_placement_per_cell(checkpoints, tiny_processed, tmp_path):
    from alphastomics.model.sample import mean_placement

    cfg = load_config(overrides=["evaluation.sampling_draws=3", "diffusion.sampling_steps=3"])
    three = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "three.parquet", cfg=cfg)
    cfg = load_config(overrides=["evaluation.sampling_draws=3", "diffusion.sampling_steps=3",
                                 "evaluation.placement=mean"])
    mean = sample(checkpoints["expr_to_pos"], tiny_processed, tmp_path / "mean.parquet", cfg=cfg)
    assert mean.num_rows * 3 == three.num_rows and set(mean["draw"].to_numpy()) == {0}
    for section in set(mean["section"].to_pylist()):
        rows = mean.filter(pa.compute.equal(mean["section"], section))
        got = np.stack([rows["x_pred"].to_numpy(), rows["y_pred"].to_numpy()], 1)
        draws = []
        for k in range(3):
            d = three.filter(pa.compute.and_(pa.compute.equal(three["section"], section),
                                             pa.compute.equal(three["draw"], k)))
            draws.append(np.stack([d["x_pred"].to_numpy(), d["y_pred"].to_numpy()], 1))
        np.testing.assert_allclose(got - got.mean(0), mean_placement(draws), atol=1e-4)


def test_train_sample_and_evaluate_record_the_commit_they_ran(checkpoints, tiny_processed, tmp_path):
    # results know their code: the package's commit and whether its files differ from it, in every output
    import subprocess

    from alphastomics.artifacts import samples_code
    from alphastomics.config import load_config
    from alphastomics.evaluation.evaluate import evaluate
    from alphastomics.provenance import code

    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    here = code()
    assert here["commit"] == head.stdout.strip() and isinstance(here["dirty"], bool)
    summary = json.loads((checkpoints["joint"].parent / "train_summary.json").read_text())
    assert summary["code"] == here
    out = tmp_path / "samples.parquet"
    sample(checkpoints["joint"], tiny_processed, out)
    assert samples_code(out) == here
    result = evaluate(out, tiny_processed, tmp_path / "eval", load_config(overrides=TINY))
    assert result["code"] == {"evaluate": here, "sample": here}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["code"] == result["code"]
