"""The reassemble stage: a withheld section placed from its expression alone equals the sample stage's
placement of it; genes by name; counts and log-normalised values; one-line refusals that write nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

from alphastomics.__main__ import main as cli
from alphastomics.config import load_config
from alphastomics.evaluation import metrics as M
from alphastomics.model.reassemble import UNS_KEY, reassemble, withheld_section
from alphastomics.model.sample import sample
from alphastomics.training.train import train

TINY = [
    "TransformerLayer_setting.d_model=16", "TransformerLayer_setting.num_layers=1",
    "TransformerLayer_setting.num_heads=2", "TransformerLayer_setting.time_embed_dim=16",
    "data.max_cells=32", "diffusion.sampling_steps=3", "training.max_steps=3", "training.batch_size=1",
    "training.val_every=3", "training.val_batches=1", "training.log_every=3", "training.warmup_steps=1",
    "diffusion.mode=expr_to_pos",
]
DRAWS = 3
SAMPLING = ["diffusion.sampling_steps=3", f"evaluation.sampling_draws={DRAWS}", "evaluation.placement=mean"]


@pytest.fixture(scope="module")
def model(tiny_processed, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reassemble")
    train(load_config(overrides=TINY), tiny_processed, root / "run")
    return root / "run" / "final.pt"


@pytest.fixture(scope="module")
def test_section(tiny_processed) -> str:
    return json.loads((tiny_processed / "manifest.json").read_text())["splits"]["test"][0]


@pytest.fixture(scope="module")
def counts(synthetic_raw, tiny_processed, test_section) -> ad.AnnData:
    """The withheld section's raw counts (the synthetic file's X), coordinates removed."""
    raw = ad.read_h5ad(synthetic_raw / "synthetic.h5ad")
    cells = raw[raw.obs["section"] == test_section].copy()
    del cells.obsm["spatial"], cells.obsm["tissue_frame"]
    return cells


def _place(model: Path, adata: ad.AnnData, tmp_path: Path, name: str = "cells", **kw) -> ad.AnnData:
    src, out = tmp_path / f"{name}.h5ad", tmp_path / f"{name}_placed.h5ad"
    adata.write_h5ad(src)
    return reassemble(model, src, out, draws=DRAWS, cfg=load_config(overrides=SAMPLING), **kw)


def _scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {"knn_preservation": M.knn_preservation(pred, true, k=10),
            "distance_spearman": M.distance_spearman(pred, true),
            "procrustes_rmsd": M.procrustes_rmsd(pred, true)}


@pytest.mark.parametrize("form", ["log_normalised", "counts"])
def test_withheld_section_is_placed_as_the_sample_stage_places_it(model, tiny_processed, test_section, counts,
                                                                   form, tmp_path):
    cfg = load_config(overrides=SAMPLING)
    table = sample(model, tiny_processed, tmp_path / "samples.parquet", cfg=cfg).to_pandas()
    rows = table[table["section"] == test_section]
    adata, true = withheld_section(tiny_processed, test_section)
    assert "spatial" not in adata.obsm and list(adata.obs_names) == list(rows["cell_id"])
    if form == "counts":
        assert list(counts.obs_names) == list(adata.obs_names)
        adata = counts
    placed = _place(model, adata, tmp_path)
    manifest = json.loads((tiny_processed / "manifest.json").read_text())
    centre = np.asarray(manifest["coordinates"]["centers"][test_section][:2])
    theirs = rows[["x_pred", "y_pred"]].to_numpy() - centre
    ours = placed.obsm["X_spatial_pred"]
    # counts: the very numbers preprocess wrote (equal to float64 rounding); log-normalised values go through
    # expm1 and back (float32 rounding of the model input)
    tolerance = 1e-9 if form == "counts" else 1e-5
    np.testing.assert_allclose(ours, theirs, atol=tolerance * manifest["coordinates"]["scale"])
    np.testing.assert_allclose(rows[["x_true", "y_true"]].to_numpy(), true, atol=1e-3)
    for key, value in _scores(theirs, true).items():
        assert _scores(ours, true)[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    info = placed.uns[UNS_KEY]
    assert info["input"] == ("counts" if form == "counts" else "normalized")
    assert info["normalization"].startswith("library_size_log1p" if form == "counts" else "expm1, then")


def test_output_fields_units_and_provenance(model, tiny_processed, test_section, tmp_path):
    adata, _ = withheld_section(tiny_processed, test_section)
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "b", "a")
    out = tmp_path / "placed.h5ad"
    src = tmp_path / "cells.h5ad"
    adata.write_h5ad(src)
    rc = cli(["reassemble", "--checkpoint", str(model), "--h5ad", str(src), "--out", str(out),
              "--group-key", "batch", "--draws", "2"])
    assert rc == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "placed.h5ad"]
    placed = ad.read_h5ad(out)
    n = adata.n_obs
    assert placed.obsm["X_spatial_pred"].shape == (n, 2) and placed.obsm["X_spatial_draws"].shape == (n, 2, 2)
    assert (placed.obs["placement_spread"] >= 0).all()
    assert list(placed.obs["batch"]) == list(adata.obs["batch"])
    np.testing.assert_allclose(placed.X, adata.X)  # the user's own data stay
    for g in ("a", "b"):  # each group is one tissue, centred at 0
        rows = (placed.obs["batch"] == g).to_numpy()
        pred, draws = placed.obsm["X_spatial_pred"][rows], placed.obsm["X_spatial_draws"][rows]
        np.testing.assert_allclose(pred.mean(0), 0.0, atol=1e-9)
        rms = np.sqrt(((draws - pred[:, None]) ** 2).sum(2).mean(1))
        np.testing.assert_allclose(placed.obs["placement_spread"][rows], rms)
    info = placed.uns[UNS_KEY]
    import hashlib

    assert info["checkpoint_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert len(info["config_sha256"]) == 64 and info["variant"] == "gated_headwise"
    assert info["draws"] == 2 and info["group_key"] == "batch" and list(info["groups"]) == ["a", "b"]
    assert len(info["genes_used"]) == 20 and len(info["genes_missing"]) == 0
    assert "centred at 0" in info["centre"] and info["mode"] == "expr_to_pos"


def test_gene_order_and_extra_genes_do_not_matter_missing_genes_are_imputed(model, tiny_processed,
                                                                           test_section, tmp_path):
    adata, _ = withheld_section(tiny_processed, test_section)
    base = _place(model, adata, tmp_path, "base").obsm["X_spatial_pred"]
    shuffled = adata[:, np.random.default_rng(0).permutation(adata.n_vars)].copy()
    np.testing.assert_allclose(_place(model, shuffled, tmp_path, "shuffled").obsm["X_spatial_pred"], base,
                               atol=1e-5)
    # Extra genes change nothing: the training library sizes counted the panel alone (gene_selection "all")
    rng = np.random.default_rng(1)
    other = ad.AnnData(rng.uniform(0.0, 5.0, (adata.n_obs, 3)).astype(np.float32), obs=adata.obs[[]])
    other.var_names = ["notInPanel1", "notInPanel2", "notInPanel3"]
    extra = ad.concat([other, adata], axis=1, merge="same")
    extra.X = sparse.csr_matrix(extra.X)  # and a sparse matrix reads the same
    placed = _place(model, extra, tmp_path, "extra")
    assert placed.uns[UNS_KEY]["genes_ignored"] == 3
    np.testing.assert_allclose(placed.obsm["X_spatial_pred"], base, atol=1e-9)
    dropped = adata[:, 2:].copy()  # 18 of 20 genes: 90 % present
    placed = _place(model, dropped, tmp_path, "dropped")
    assert list(placed.uns[UNS_KEY]["genes_missing"]) == list(adata.var_names[:2])
    assert np.isfinite(placed.obsm["X_spatial_pred"]).all()


def _refused(model: Path, adata: ad.AnnData, tmp_path: Path, capsys, message: str, *extra: str) -> None:
    src, out = tmp_path / "bad.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(src)
    rc = cli(["reassemble", "--checkpoint", str(model), "--h5ad", str(src), "--out", str(out), *extra])
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 2 and len(line) == 1 and message in line[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5ad"]  # nothing written, no temporary left


@pytest.mark.parametrize("case, message, extra", [
    ("below_share", "5 of the model's 20 genes are missing (", ()),
    ("no_overlap", "none of the model's 20 genes is in var_names", ()),
    ("zero_cell", "1 cell(s) express none of the 20 model genes found (first", ()),
    ("all_zero", "X is all zeros", ()),
    ("empty_group", "group 'empty' of obs['batch'] has 0 cell(s)", ("--group-key", "batch")),
    ("one_cell_group", "group 'b' of obs['batch'] has 1 cell(s)", ("--group-key", "batch")),
    ("negative", "has negative values (scaled or z-scored?)", ()),
    ("missing_layer", "layers['counts'] not found", ("--layer", "counts")),
    ("nan", "X has NaN/inf in 1 cells", ()),
    ("no_cells", "the file has no cells", ()),
])
def test_bad_input_is_one_line_and_writes_nothing(model, tiny_processed, test_section, tmp_path, capsys,
                                                 case, message, extra):
    import pandas as pd

    adata, _ = withheld_section(tiny_processed, test_section)
    if case == "below_share":
        adata = adata[:, 5:].copy()  # 75 % of the panel
    elif case == "no_overlap":
        adata.var_names = [f"other{i}" for i in range(adata.n_vars)]
    elif case == "zero_cell":
        adata.X[5] = 0.0
    elif case == "all_zero":
        adata.X[:] = 0.0
    elif case == "empty_group":
        adata.obs["batch"] = pd.Categorical(["a"] * adata.n_obs, categories=["a", "empty"])
    elif case == "one_cell_group":
        adata.obs["batch"] = ["b"] + ["a"] * (adata.n_obs - 1)
    elif case == "negative":
        adata.X = adata.X - adata.X.mean(0)
    elif case == "nan":
        adata.X[3, 4] = np.nan
    elif case == "no_cells":
        adata = adata[:0].copy()
    _refused(model, adata, tmp_path, capsys, message, *extra)


def _with_normalization(model: Path, tmp_path: Path, **normalization) -> Path:
    """The checkpoint as if its training data had been normalised otherwise (only the manifest differs)."""
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    ckpt["manifest"]["normalization"].update(normalization)
    path = tmp_path / "other" / "final.pt"
    path.parent.mkdir()
    torch.save(ckpt, path)
    return path


def test_counts_for_a_model_trained_on_normalised_values_are_refused(model, tiny_processed, test_section,
                                                                     counts, tmp_path, capsys):
    other = _with_normalization(model, tmp_path, input="normalized", applied="none", target_sum=None)
    data = tmp_path / "data"
    data.mkdir()
    _refused(other, counts, data, capsys, "holds counts values but")
    # the values it was trained on are taken as they are
    adata, _ = withheld_section(tiny_processed, test_section)
    placed = _place(other, adata, data, "normalised")
    assert placed.uns[UNS_KEY]["normalization"].startswith("none")


def test_after_a_gene_selection_library_sizes_count_every_gene_of_the_file(model, counts, tmp_path):
    """A model whose training files had more genes than its panel (highly variable genes) counted them all
    in library sizes: so do the cells' extra genes here; with the panel alone (the fixture) they do not."""
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    ckpt["manifest"]["gene_selection"]["method"] = "highly_variable_genes"
    selected = tmp_path / "hvg.pt"
    torch.save(ckpt, selected)
    rng = np.random.default_rng(2)
    other = ad.AnnData(rng.poisson(50.0, (counts.n_obs, 5)).astype(np.float32), obs=counts.obs[[]])
    other.var_names = [f"extra{i}" for i in range(5)]
    extra = ad.concat([counts, other], axis=1, merge="same")
    panel_only = _place(model, extra, tmp_path, "panel")
    every_gene = _place(selected, extra, tmp_path, "every")
    assert "over the model's genes found" in panel_only.uns[UNS_KEY]["normalization"]
    assert "every gene of the file" in every_gene.uns[UNS_KEY]["normalization"]
    np.testing.assert_allclose(_place(model, counts, tmp_path, "plain").obsm["X_spatial_pred"],
                               panel_only.obsm["X_spatial_pred"], atol=1e-9)
    assert not np.allclose(every_gene.obsm["X_spatial_pred"], panel_only.obsm["X_spatial_pred"])


def test_model_of_another_mode_and_too_few_draws_are_refused(model, tiny_processed, counts, tmp_path, capsys):
    train(load_config(overrides=[*TINY, "diffusion.mode=joint"]), tiny_processed, tmp_path / "joint")
    joint = tmp_path / "joint" / "final.pt"
    data = tmp_path / "data"
    data.mkdir()
    _refused(joint, counts, data, capsys, "trained in diffusion.mode 'joint'")
    _refused(model, counts, data, capsys, "--draws is 0", "--draws", "0")


def test_several_checkpoints_pick_the_lowest_validation_loss(model, tiny_processed, test_section, tmp_path):
    import shutil

    runs = []
    for seed, loss in ((0, 0.9), (1, 0.4), (2, 0.7)):
        run = tmp_path / f"seed{seed}" / "train"
        run.mkdir(parents=True)
        shutil.copy(model, run / "final.pt")
        (run / "train_summary.json").write_text(json.dumps({"best_val_loss": loss}))
        runs.append(run / "final.pt")
    adata, _ = withheld_section(tiny_processed, test_section)
    info = _place(model=runs, adata=adata, tmp_path=tmp_path).uns[UNS_KEY]  # type: ignore[arg-type]
    assert info["checkpoint"] == str(runs[1]) and "lowest best_val_loss (0.4)" in info["picked_by"]


def test_figure_script_draws_truth_and_reassembly(model, tiny_processed, test_section, tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reassemble_figure.py"
    spec = importlib.util.spec_from_file_location("reassemble_figure", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "fig.png"
    args = ["--checkpoint", str(model), "--data-dir", str(tiny_processed), "--section", test_section,
            "--out", str(out), "--draws", "2"]
    assert module.main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


@pytest.mark.workflow
def test_workflow_rule_dry_run(tmp_path):
    pytest.importorskip("snakemake")
    from workflow_helpers import dry_run, make_copy, write_config

    repo = make_copy(tmp_path)
    (repo / "cells.h5ad").touch()  # a dry run only asks that the input exists

    def edit(c, seed):
        c["seeds"] = [0, 1]
        c["reassemble"] = {"h5ad": "cells.h5ad", "dataset": "synthetic", "variant": "gated_headwise",
                           "seed": seed, "group_key": "sample", "draws": 4}

    config = write_config(repo, "ra.yaml", lambda c: edit(c, 1))
    counts, out = dry_run(repo, "results/reassemble/cells.h5ad", "-p", "--configfile", config)
    assert counts["reassemble"] == 1 and counts["train"] == 1 and "sample" not in counts
    block = out[out.index("rule reassemble:"):].split("\n\n")[0]
    assert "--checkpoint results/synthetic/gated_headwise/seed1/train/final.pt --h5ad cells.h5ad" in block
    assert "--group-key sample" in block and "--draws 4" in block and "diffusion.sampling_steps=3" in block
    assert dry_run(repo, "--configfile", config)[0].get("reassemble") is None  # not part of `all`
    config = write_config(repo, "best.yaml", lambda c: edit(c, "best"))
    counts, out = dry_run(repo, "reassembled", "-p", "--configfile", config)
    block = out[out.index("rule reassemble:"):].split("\n\n")[0]
    assert counts["train"] == 2 and all(f"seed{s}/train/train_summary.json" in block for s in (0, 1))
    bad = write_config(repo, "bad.yaml", lambda c: edit(c, 7))
    from workflow_helpers import snakemake

    proc = snakemake(repo, "reassembled", "-n", "--cores", "1", "--configfile", bad, check=False)
    assert proc.returncode != 0 and "reassemble.seed is 7" in proc.stdout + proc.stderr
