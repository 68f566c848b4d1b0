"""preprocess: round trip, normalisation from training sections only, split rules, Parquet layout, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from alphastomics.__main__ import main as cli
from alphastomics.config import DatasetConfig
from alphastomics.data import ProcessedData, eval_batches, original_positions, undo_normalization
from alphastomics.datasets import DataError, fetch_user_files
from alphastomics.preprocess import assign_splits, preprocess, preprocess_anndata

DCFG = DatasetConfig(name="toy", source="h5ad", val_fraction=0.2, test_fraction=0.2)


def toy_adata(n_sections: int = 5, n: int = 30, genes: int = 6, counts: bool = True, dims: int = 2, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    total = n_sections * n
    x = rng.poisson(5.0, (total, genes)).astype(np.float32) if counts else rng.normal(size=(total, genes)).astype(np.float32)
    obs = pd.DataFrame({"section": np.repeat([f"s{i}" for i in range(n_sections)], n),
                        "cell_type": rng.choice(["a", "b", "c"], total)}, index=[f"c{i}" for i in range(total)])
    adata = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))
    adata.obsm["spatial"] = rng.uniform(0, 100, (total, dims))
    return adata


def lognorm(x: np.ndarray, target: float) -> np.ndarray:
    x = x.astype(np.float64)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * target)


@pytest.mark.parametrize("counts", [True, False])
def test_round_trip_h5ad_to_parquet_to_batch(tmp_path: Path, counts: bool) -> None:
    adata = toy_adata(counts=counts)
    manifest = preprocess_anndata(adata, DCFG, tmp_path / "p")
    assert manifest["normalization"]["input"] == ("counts" if counts else "normalized")
    data = ProcessedData(tmp_path / "p")
    seen = 0
    for split in ("train", "val", "test"):
        for batch in eval_batches(data, split):
            name, m = batch.sections[0], batch.mask[0].numpy()
            rows = np.flatnonzero(adata.obs["section"] == name)[batch.index[0, m].numpy()]
            expected = lognorm(adata.X[rows], DCFG.target_sum) if counts else adata.X[rows]
            got = undo_normalization(batch.expression[0, m].numpy(), manifest)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
            pos = original_positions(batch.positions[0, m].numpy().astype(np.float64), name, manifest)
            np.testing.assert_allclose(pos, adata.obsm["spatial"][rows], rtol=1e-5, atol=1e-3)
            types = [data.cell_types[c] for c in batch.cell_type[0, m].numpy()]
            assert types == list(adata.obs["cell_type"].iloc[rows])
            seen += int(m.sum())
    assert seen == adata.n_obs


def test_standardisation_and_scale_come_from_training_sections_only(tmp_path: Path) -> None:
    adata = toy_adata(counts=False)
    adata.X[:, 3] = 2.0  # a gene constant everywhere: std guarded to 1, never a division by ~0
    m1 = preprocess_anndata(adata, DCFG, tmp_path / "a")
    held_out = np.isin(adata.obs["section"], m1["splits"]["val"] + m1["splits"]["test"])
    adata.X[held_out] *= 7
    adata.obsm["spatial"][held_out] *= 3
    m2 = preprocess_anndata(adata, DCFG, tmp_path / "b")
    assert m1["normalization"]["gene_mean"] == m2["normalization"]["gene_mean"]
    assert m1["coordinates"]["scale"] == m2["coordinates"]["scale"]
    data = ProcessedData(tmp_path / "a")
    train = [data.section(s) for s in data.splits["train"]]
    expr = np.concatenate([s.expression for s in train])
    pos = np.concatenate([s.positions for s in train])
    np.testing.assert_allclose(expr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.delete(expr.std(0), 3), 1, atol=1e-4)
    assert np.isfinite(expr).all() and m1["normalization"]["gene_std"][3] == 1.0
    np.testing.assert_allclose(np.sqrt((pos**2).sum(1).mean()), 1.0, rtol=1e-5)  # RMS radius = 1
    for s in train:
        np.testing.assert_allclose(s.positions.mean(0), 0, atol=1e-5)  # centred per section


def test_parquet_layout_follows_the_contract(tiny_processed: Path) -> None:
    f = pq.ParquetFile(tiny_processed / "cells.parquet")
    manifest = json.loads((tiny_processed / "manifest.json").read_text())
    assert f.metadata.num_row_groups == len(manifest["sections"])
    for i, s in enumerate(manifest["sections"]):
        rg = f.read_row_group(i, columns=["section"])
        assert set(rg.column("section").to_pylist()) == {s} and rg.num_rows == manifest["cells_per_section"][s]
        assert f.metadata.row_group(i).column(0).compression == "ZSTD"
    schema = f.schema_arrow
    assert str(schema.field("expression").type) == f"fixed_size_list<element: float>[{manifest['n_genes']}]"
    assert all(str(schema.field(c).type) == "float" for c in "xyz")
    assert json.loads(schema.metadata[b"alphastomics.genes"]) == manifest["genes"]
    assert json.loads(schema.metadata[b"alphastomics.parameters"])["name"] == "tiny2d"
    z = pq.read_table(tiny_processed / "cells.parquet", columns=["z"]).column("z").to_numpy()
    assert manifest["dims"] == 2 and (z == 0).all()


@pytest.mark.parametrize("fixture", ["tiny_processed", "tiny_processed_3d", "bdtnp_processed"])
def test_no_section_is_in_two_splits(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    manifest = json.loads((path / "manifest.json").read_text())
    splits = manifest["splits"]
    names = [s for v in splits.values() for s in v]
    assert len(names) == len(set(names)) == len(manifest["sections"]) and splits["train"] and splits["test"]
    t = pq.read_table(path / "cells.parquet", columns=["section", "split"]).to_pandas()
    assert (t.groupby("section", observed=True)["split"].nunique() == 1).all()
    for split, secs in splits.items():
        assert set(t.loc[t["split"] == split, "section"]) == set(secs)


def test_bdtnp_slabs_hold_out_odd_slabs_alternating_test_and_val(bdtnp_processed: Path) -> None:
    m = json.loads((bdtnp_processed / "manifest.json").read_text())
    assert m["splits"] == {"train": ["slab00", "slab02", "slab04", "slab06"], "val": ["slab03", "slab07"],
                           "test": ["slab01", "slab05"]}
    assert m["dims"] == 3 and m["n_cells"] == 3039 and m["normalization"]["input"] == "normalized"


def test_split_rules() -> None:
    names = [f"s{i}" for i in range(10)]
    explicit = assign_splits(names, replace(DCFG, val_sections=("s1",), test_sections=("s2", "s3")), True, "x")
    assert [k for k, v in explicit.items() if v != "train"] == ["s1", "s2", "s3"]
    a = assign_splits(names, DCFG, False, "x")
    assert a == assign_splits(names, DCFG, False, "x") != assign_splits(names, replace(DCFG, split_seed=1), False, "x")
    assert sorted(a.values()).count("test") == 2 and sorted(a.values()).count("val") == 2
    two = assign_splits(["a", "b"], replace(DCFG, val_fraction=0.5, test_fraction=0.5), False, "x")
    assert sorted(two.values()) == ["test", "train"]
    with pytest.raises(DataError, match="splits are by section"):
        assign_splits(["only"], DCFG, False, "f.h5ad")
    with pytest.raises(DataError, match="unknown section"):
        assign_splits(names, replace(DCFG, test_sections=("nope",)), False, "x")


# ---------------------------------------------------------------- bad input: one line, file + field + fix,
# and no output folder left behind


def _bad_h5ad(tmp_path: Path, adatas: dict[str, ad.AnnData], **cfg: object) -> tuple[DatasetConfig, Path]:
    src = tmp_path / "src"
    src.mkdir()
    for name, a in adatas.items():
        a.write_h5ad(src / f"{name}.h5ad")
    path = src if len(adatas) > 1 else src / f"{next(iter(adatas))}.h5ad"
    return replace(DCFG, path=str(path), **cfg), src


def _expect_error(tmp_path: Path, dcfg: DatasetConfig, *needles: str) -> str:
    with pytest.raises(DataError) as err:
        fetch_user_files(tmp_path / "raw", dcfg)
        preprocess(tmp_path / "raw", dcfg, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "; " in msg, msg  # one line: what is wrong; how to fix it
    for needle in needles:
        assert needle in msg, msg
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder either
    return msg


def test_bad_missing_coordinate_key(tmp_path: Path) -> None:
    dcfg, _ = _bad_h5ad(tmp_path, {"d": toy_adata()}, coordinate_key="X_spatial")
    _expect_error(tmp_path, dcfg, "d.h5ad", "obsm['X_spatial']", "dataset.coordinate_key")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_bad_coordinates_not_finite(tmp_path: Path, value: float) -> None:
    a = toy_adata()
    a.obsm["spatial"][7, 1] = value
    dcfg, _ = _bad_h5ad(tmp_path, {"d": a})
    _expect_error(tmp_path, dcfg, "d.h5ad", "obsm['spatial']", "NaN/inf", "first row 7")


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_bad_expression_not_finite(tmp_path: Path, value: float) -> None:
    a = toy_adata()
    a.X[100, 2] = value  # in the last section: the error comes after other sections were read
    dcfg, _ = _bad_h5ad(tmp_path, {"d": a})
    _expect_error(tmp_path, dcfg, "d.h5ad", "X has NaN/inf", "section 's3'")


def test_bad_no_shared_genes(tmp_path: Path) -> None:
    a, b = toy_adata(1), toy_adata(1)
    b.var_names = [f"other{j}" for j in range(b.n_vars)]
    dcfg, _ = _bad_h5ad(tmp_path, {"a": a, "b": b})
    _expect_error(tmp_path, dcfg, str(tmp_path / "raw"), "no gene is shared", "a.h5ad, b.h5ad")


def test_bad_section_with_one_cell(tmp_path: Path) -> None:
    a = toy_adata()
    a.obs["section"] = a.obs["section"].astype(str)
    a.obs.iloc[0, a.obs.columns.get_loc("section")] = "lonely"
    dcfg, _ = _bad_h5ad(tmp_path, {"d": a})
    _expect_error(tmp_path, dcfg, "d.h5ad", "section 'lonely' has 1 cell")


def test_bad_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.h5ad").write_bytes(b"")
    _expect_error(tmp_path, replace(DCFG, path=str(tmp_path / "empty.h5ad")), "empty.h5ad", "empty")
    (tmp_path / "empty.h5ad").unlink()
    dcfg, _ = _bad_h5ad(tmp_path, {"nocells": toy_adata()[:0].copy()})
    _expect_error(tmp_path, dcfg, "nocells.h5ad", "no cells")


def test_bad_four_dimensional_coordinates(tmp_path: Path) -> None:
    a = toy_adata(dims=4)
    dcfg, _ = _bad_h5ad(tmp_path, {"d": a})
    _expect_error(tmp_path, dcfg, "d.h5ad", "obsm['spatial'] has shape 150x4", "(cells, 3)")


def test_bad_gene_list_names_absent_genes(tmp_path: Path) -> None:
    genes = tmp_path / "genes.txt"
    genes.write_text("g1\ng2\nBOGUS\n")
    dcfg, _ = _bad_h5ad(tmp_path, {"d": toy_adata()}, genes_file=str(genes))
    _expect_error(tmp_path, dcfg, "genes.txt", "BOGUS", "remove them")


def test_bad_single_section_explains_splits(tmp_path: Path) -> None:
    dcfg, _ = _bad_h5ad(tmp_path, {"d": toy_adata(1)})
    _expect_error(tmp_path, dcfg, "d.h5ad", "splits are by section", "dataset.section_key")


def test_gene_list_selects_and_orders_genes(tmp_path: Path) -> None:
    genes = tmp_path / "genes.txt"
    genes.write_text("g4\ng1\n")
    a = toy_adata()
    m = preprocess_anndata(a, replace(DCFG, genes_file=str(genes)), tmp_path / "p")
    assert m["genes"] == ["g4", "g1"]
    sec = ProcessedData(tmp_path / "p").section("s0")
    expected = lognorm(a.X[:30], DCFG.target_sum)[:, [4, 1]]  # normalised over all genes, then selected
    np.testing.assert_allclose(undo_normalization(sec.expression, m), expected, rtol=1e-5, atol=1e-5)


def test_cli_prints_one_line_and_exits_2_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dcfg, _ = _bad_h5ad(tmp_path, {"d": toy_adata(dims=4)})
    rc = cli(["fetch-data", "--out", str(tmp_path / "raw"), "--set", "dataset.source=h5ad", "--set", f"dataset.path={dcfg.path}"])
    assert rc == 0
    rc = cli(["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--set", "dataset.source=h5ad"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "d.h5ad" in err
    assert not (tmp_path / "out").exists()
