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
from alphastomics.artifacts import DataError
from alphastomics.config import DatasetConfig
from alphastomics.data.batches import ProcessedData, eval_batches, original_positions, undo_normalization
from alphastomics.data.fetch import fetch_user_files
from alphastomics.data.preprocess import preprocess, preprocess_anndata
from alphastomics.data.splits import assign_splits

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
            types = [data.cell_types[c] for c in data.section(name).cell_type[batch.index[0, m].numpy()]]
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
    two = assign_splits(["a", "b"], replace(DCFG, val_fraction=0.0, test_fraction=0.5), False, "x")
    assert sorted(two.values()) == ["test", "train"]
    with pytest.raises(DataError, match=r"f.h5ad: 2 sections \(a, b\) cannot give .*dataset.val_fraction=0.*dataset.test_sections"):
        assign_splits(["a", "b"], DCFG, False, "f.h5ad")
    for seed in range(5):  # three sections: one each, whatever the shuffle
        three = assign_splits(["a", "b", "c"], replace(DatasetConfig(), split_seed=seed), False, "x")
        assert sorted(three.values()) == ["test", "train", "val"]
    # the documented rule for more: max(1, round(fraction * n)) each, at least one training section
    for n, (n_val, n_test) in {4: (1, 1), 6: (1, 2), 10: (2, 2), 20: (3, 5)}.items():
        got = list(assign_splits([f"s{i}" for i in range(n)], DatasetConfig(), False, "x").values())
        assert (got.count("val"), got.count("test")) == (n_val, n_test), n
    explicit3 = assign_splits(["a", "b", "c"], replace(DCFG, test_sections=("a",)), False, "x")
    assert explicit3 == {"a": "test", "b": "train", "c": "train"}  # explicit lists still win
    with pytest.raises(DataError, match="splits are by section"):
        assign_splits(["only"], DCFG, False, "f.h5ad")
    with pytest.raises(DataError, match="unknown section"):
        assign_splits(names, replace(DCFG, test_sections=("nope",)), False, "x")


def test_split_rule_trains_on_the_largest_sections() -> None:
    # three coverslips: the largest trains whatever the seed; the seed deals the other two to test and val
    sizes = {"a": 400, "b": 645, "c": 300}
    dealt = set()
    for seed in range(10):
        split = assign_splits(list(sizes), replace(DatasetConfig(), split_seed=seed), False, "x", sizes)
        assert split["b"] == "train"
        dealt.add((split["a"], split["c"]))
    assert dealt == {("test", "val"), ("val", "test")}
    # ten sections, 6 / 2 / 2: the six largest train for every seed
    names = [f"s{i}" for i in range(10)]
    sizes = {s: 100 + 10 * i for i, s in enumerate(names)}
    for seed in range(5):
        split = assign_splits(names, replace(DatasetConfig(), split_seed=seed), False, "x", sizes)
        assert [s for s in names if split[s] == "train"] == names[4:]
    # equal sizes: the plain seeded shuffle
    for seed in range(5):
        dcfg = replace(DatasetConfig(), split_seed=seed)
        assert assign_splits(names, dcfg, False, "x", dict.fromkeys(names, 50)) == assign_splits(names, dcfg, False, "x")


def test_preprocess_logs_each_section_with_its_split_and_cells(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    sizes = {"cs1": 400, "cs2": 645, "cs3": 300}
    n = sum(sizes.values())
    a = ad.AnnData(rng.poisson(2.0, (n, 6)).astype(np.float32),
                   obs=pd.DataFrame({"section": np.repeat(list(sizes), list(sizes.values()))},
                                    index=[f"c{i}" for i in range(n)]))
    a.obsm["spatial"] = rng.uniform(0, 100, (n, 2))
    a.write_h5ad(tmp_path / "lab.h5ad")
    sets = ["--set", "dataset.source=h5ad", "--set", f"dataset.path={tmp_path / 'lab.h5ad'}"]
    assert cli(["fetch-data", "--out", str(tmp_path / "raw"), *sets]) == 0
    capsys.readouterr()
    assert cli(["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "proc"), *sets]) == 0
    out, err = capsys.readouterr()
    line = next(x for x in out.splitlines() if x.startswith("preprocess: train:"))
    assert line.startswith("preprocess: train: cs2 (645 cells); ")
    assert {"val: cs1 (400 cells)", "test: cs3 (300 cells)"} <= set(line.split("; ")) or \
        {"val: cs3 (300 cells)", "test: cs1 (400 cells)"} <= set(line.split("; "))
    # the missing optional cell-type column: a note in the log and in the manifest
    assert "no cell-type column 'cell_type' (dataset.cell_type_key): the cell-type metrics" in err
    manifest = json.loads((tmp_path / "proc" / "manifest.json").read_text())
    assert manifest["notes"] == ["no cell-type column 'cell_type' (dataset.cell_type_key): the cell-type metrics "
                                 "(neighborhood_ari, neighborhood_nmi) are not measured"]


# ---------------------------------------------------------------- bad input: one line, file + field + fix,
# and no output folder left behind


def _bad_h5ad(tmp_path: Path, adatas: dict[str, ad.AnnData], **cfg: object) -> tuple[DatasetConfig, Path]:
    src = tmp_path / "src"
    src.mkdir(parents=True)
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
    _expect_error(tmp_path, dcfg, str(tmp_path / "src"), "no gene is shared", "a.h5ad, b.h5ad")


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
    err = capsys.readouterr().err
    # fetch-data validates what it fetches: the user's own file is named, nothing is left behind
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {dcfg.path}: obsm['spatial'] has shape 150x4")
    assert not (tmp_path / "raw").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ---------------------------------------------------------------- every AnnData layout a lab produces


def _cells(out: Path) -> pd.DataFrame:
    """The processed table keyed by cell id (row order inside a section follows the file)."""
    t = pq.read_table(out / "cells.parquet").to_pandas()
    return t.set_index("cell_id").sort_index()


def _layout(a: ad.AnnData, layout: str, rng: np.random.Generator) -> tuple[ad.AnnData, dict[str, object]]:
    from scipy import sparse

    a = a[rng.permutation(a.n_obs)].copy()  # sections interleaved: never contiguous rows
    if layout == "csr_shuffled":
        a.X = sparse.csr_matrix(a.X)
        return a, {}
    if layout == "csc_shuffled":
        a.X = sparse.csc_matrix(a.X)
        return a, {}
    if layout == "layer":  # counts in a layer, normalised values in X (scanpy's usual state after normalising)
        a.layers["counts"] = sparse.csr_matrix(a.X)
        a.X = np.log1p(a.X) * 3.0
        return a, {"layer": "counts"}
    if layout == "obs_columns":
        a.obs["x_um"], a.obs["y_um"] = a.obsm["spatial"][:, 0], a.obsm["spatial"][:, 1]
        del a.obsm["spatial"]
        return a, {"coordinate_obs": ("x_um", "y_um")}
    if layout == "obsm_other_key":
        a.obsm["X_centroids"] = a.obsm.pop("spatial")
        return a, {"coordinate_key": "X_centroids"}
    return a, {}


@pytest.mark.parametrize("layout", ["dense_shuffled", "csr_shuffled", "csc_shuffled", "layer", "obs_columns", "obsm_other_key"])
def test_every_anndata_layout_gives_the_same_processed_cells(tmp_path: Path, layout: str) -> None:
    base = toy_adata(n_sections=4, n=25, genes=7)
    base.X[5] = 0.0  # a cell without counts stays zero
    ref_cfg, _ = _bad_h5ad(tmp_path / "ref", {"d": base})
    fetch_user_files(tmp_path / "ref" / "raw", ref_cfg)
    preprocess(tmp_path / "ref" / "raw", ref_cfg, tmp_path / "ref" / "out")
    a, keys = _layout(base, layout, np.random.default_rng(1))
    dcfg, _ = _bad_h5ad(tmp_path / "alt", {"d": a}, **keys)
    fetch_user_files(tmp_path / "alt" / "raw", dcfg)
    m = preprocess(tmp_path / "alt" / "raw", dcfg, tmp_path / "alt" / "out")
    want, got = _cells(tmp_path / "ref" / "out"), _cells(tmp_path / "alt" / "out")
    assert m["normalization"]["input"] == "counts" and m["n_cells"] == 100
    assert list(got.index) == list(want.index)
    for col in ("section", "split", "x", "y", "z", "cell_type"):
        assert list(got[col]) == list(want[col]), col
    np.testing.assert_array_equal(np.stack(got["expression"]), np.stack(want["expression"]))


def test_rows_of_a_section_are_gathered_by_index_from_a_sparse_file(tmp_path: Path) -> None:
    from scipy import sparse

    a = toy_adata(n_sections=3, n=20, genes=5)
    order = np.random.default_rng(3).permutation(a.n_obs)
    a = a[order].copy()
    dense = a.X.copy()
    a.X = sparse.csr_matrix(a.X)
    dcfg, _ = _bad_h5ad(tmp_path, {"d": a})
    fetch_user_files(tmp_path / "raw", dcfg)
    from alphastomics.data.raw import open_raw

    raw = open_raw(tmp_path / "raw", dcfg)
    for s in raw.sections:
        rows = np.flatnonzero(a.obs["section"].to_numpy() == s.name)
        assert np.diff(rows).max() > 1  # really scattered
        np.testing.assert_array_equal(s.load(), dense[rows])
        assert list(s.cell_ids) == list(a.obs_names[rows])


# ---------------------------------------------------------------- checks: one line, the user's file, the key


def test_duplicate_cell_ids_are_refused(tmp_path: Path) -> None:
    a = toy_adata()
    a.obs_names = ["c0"] * 3 + list(a.obs_names[3:])
    dcfg, src = _bad_h5ad(tmp_path, {"d": a})
    msg = _expect_error(tmp_path, dcfg, str(src / "d.h5ad"), "obs_names has 2 duplicate cell id(s) (first 'c0')",
                        "obs_names_make_unique")
    assert not (tmp_path / "raw").exists()  # fetch-data itself refused
    assert msg.startswith(str(src / "d.h5ad"))


def test_duplicate_gene_names_are_made_unique_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = toy_adata(genes=4)
    a.var_names = ["Actb", "Gapdh", "Actb", "Actb"]
    dcfg, src = _bad_h5ad(tmp_path, {"d": a})
    fetch_user_files(tmp_path / "raw", dcfg)
    m = preprocess(tmp_path / "raw", dcfg, tmp_path / "out")
    assert m["genes"] == ["Actb", "Gapdh", "Actb-1", "Actb-2"]  # anndata's var_names_make_unique
    err = capsys.readouterr().err
    assert f"note: {src / 'd.h5ad'}: var_names has 2 repeated gene name(s) (Actb); made unique" in err


def test_constant_z_is_treated_as_2d_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = toy_adata(n_sections=3, dims=3)
    a.obsm["spatial"][:, 2] = np.repeat([0.0, 10.0, 20.0], 30)  # z = section depth: constant per section
    dcfg, _ = _bad_h5ad(tmp_path, {"d": a})
    fetch_user_files(tmp_path / "raw", dcfg)
    m = preprocess(tmp_path / "raw", dcfg, tmp_path / "out")
    two_d = preprocess_anndata(toy_adata(n_sections=3, dims=3)[:, :], replace(DCFG, coordinate_obs=()), tmp_path / "unused")
    assert m["dims"] == 2 and two_d["dims"] == 3 and m["notes"] == ["constant z dropped: 2D"]
    assert "z is constant within every section; sections treated as 2D" in capsys.readouterr().err
    assert (_cells(tmp_path / "out")["z"] == 0).all()


def test_nan_in_sparse_expression_names_the_users_file_not_the_link(tmp_path: Path) -> None:
    from scipy import sparse

    a = toy_adata()
    a.X[40, 1] = np.nan
    a = a[np.random.default_rng(0).permutation(a.n_obs)].copy()
    a.X = sparse.csr_matrix(a.X)
    dcfg, src = _bad_h5ad(tmp_path, {"d": a})
    msg = _expect_error(tmp_path, dcfg, f"{src / 'd.h5ad'}: X has NaN/inf in 1 cells of section 's1'")
    assert "/raw/" not in msg


def test_missing_layer_and_obs_columns_name_the_key_to_set(tmp_path: Path) -> None:
    dcfg, _ = _bad_h5ad(tmp_path, {"d": toy_adata()}, layer="counts")
    _expect_error(tmp_path, dcfg, "layers['counts'] not found (layers: none)", "dataset.layer")
    dcfg = replace(dcfg, layer=None, coordinate_obs=("x", "y"))
    _expect_error(tmp_path, dcfg, "obs column(s) ['x', 'y'] not found (obs has: section, cell_type)", "dataset.coordinate_obs")
    dcfg = replace(dcfg, coordinate_obs=(), section_key="slice")
    _expect_error(tmp_path, dcfg, "obs['slice'] not found", "dataset.section_key")


def test_obsm_without_the_key_lists_what_it_has(tmp_path: Path) -> None:
    a = toy_adata()
    a.obsm["X_umap"] = a.obsm.pop("spatial")
    dcfg, _ = _bad_h5ad(tmp_path, {"d": a})
    _expect_error(tmp_path, dcfg, "obsm['spatial'] not found (obsm has: X_umap)", "dataset.coordinate_key")
    del a.obsm["X_umap"]
    dcfg, _ = _bad_h5ad(tmp_path / "b", {"d": a})
    with pytest.raises(DataError, match=r"obsm has: nothing\); set dataset.coordinate_key"):
        fetch_user_files(tmp_path / "b" / "raw", dcfg)


def test_two_sections_with_validation_wanted_say_how_to_set_splits(tmp_path: Path) -> None:
    dcfg, src = _bad_h5ad(tmp_path, {"d": toy_adata(2)})
    _expect_error(tmp_path, dcfg, str(src / "d.h5ad"), "2 sections (s0, s1)", "dataset.val_fraction=0", "dataset.test_sections")


def test_three_sections_default_to_one_train_one_val_one_test(tmp_path: Path) -> None:
    dcfg, _ = _bad_h5ad(tmp_path, {"d": toy_adata(3)})
    fetch_user_files(tmp_path / "raw", replace(dcfg, val_fraction=0.15, test_fraction=0.25))
    m = preprocess(tmp_path / "raw", replace(dcfg, val_fraction=0.15, test_fraction=0.25), tmp_path / "out")
    assert sorted(len(v) for v in m["splits"].values()) == [1, 1, 1]


def test_fetch_data_refuses_a_text_file_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cells.h5ad"
    f.write_text("cell,x,y\nc1,0,0\n")
    rc = cli(["fetch-data", "--out", str(tmp_path / "raw"), "--set", "dataset.source=h5ad", "--set", f"dataset.path={f}"])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {f}: not a readable .h5ad (HDF5) file; re-export it with anndata (adata.write_h5ad) or fix dataset.path\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]


# ---------------------------------------------------------------- gene selection (scanpy, training sections only)


def _many_genes(n_sections: int = 3, n: int = 60, genes: int = 40, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 4.0, genes)
    x = rng.poisson(rate * rng.gamma(2.0, 0.5, (n_sections * n, genes))).astype(np.float32)
    obs = pd.DataFrame({"section": np.repeat([f"s{i}" for i in range(n_sections)], n)},
                       index=[f"c{i}" for i in range(n_sections * n)])
    a = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))
    a.obsm["spatial"] = rng.uniform(0, 100, (n_sections * n, 2))
    return a


def test_highly_variable_genes_are_scanpys_choice_on_training_sections_only(tmp_path: Path) -> None:
    import scanpy as sc

    a = _many_genes()
    dcfg = replace(DCFG, n_top_genes=10, test_sections=("s2",), val_sections=("s1",))
    m = preprocess_anndata(a, dcfg, tmp_path / "p")
    train = a[a.obs["section"] == "s0"].copy()
    sc.pp.normalize_total(train, target_sum=dcfg.target_sum)
    sc.pp.log1p(train)
    sc.pp.highly_variable_genes(train, n_top_genes=10, flavor="seurat")
    expected = list(train.var_names[train.var["highly_variable"]])
    assert m["genes"] == expected and m["n_genes"] == 10
    assert m["gene_selection"] == {"method": "highly_variable_genes", "flavor": "seurat", "n_top_genes": 10,
                                   "from_genes": 40, "selected": 10, "on_sections": ["s0"]}
    # held-out sections do not move the choice
    b = a.copy()
    b.X[b.obs["section"] != "s0"] = np.random.default_rng(9).poisson(50.0, (120, 40))
    assert preprocess_anndata(b, dcfg, tmp_path / "q")["genes"] == expected
    # library sizes use every gene, then the selected columns are kept
    sec = ProcessedData(tmp_path / "p").section("s0")
    cols = [a.var_names.get_loc(g) for g in expected]
    np.testing.assert_allclose(undo_normalization(sec.expression, m), lognorm(a.X[:60], dcfg.target_sum)[:, cols],
                               rtol=1e-5, atol=1e-5)


def test_no_selection_when_genes_do_not_exceed_n_top_genes(tmp_path: Path) -> None:
    a = _many_genes(genes=12)
    m = preprocess_anndata(a, replace(DCFG, n_top_genes=12), tmp_path / "p")
    assert m["genes"] == list(a.var_names) and m["gene_selection"]["method"] == "all"
    m = preprocess_anndata(a, replace(DCFG, n_top_genes=None), tmp_path / "q")
    assert m["n_genes"] == 12
    with pytest.raises(DataError, match="dataset.n_top_genes is 0"):
        preprocess_anndata(a, replace(DCFG, n_top_genes=0), tmp_path / "r")


def test_scanpy_normalisation_works_in_place_and_equals_the_formula() -> None:
    from alphastomics.data.normalization import normalise

    x = np.random.default_rng(0).poisson(0.5, (200, 30)).astype(np.float32)
    x[7] = 0.0
    before = x.copy()
    out = normalise(x, "library_size_log1p", 1e4, None)
    assert out is x  # no second copy of a section
    expected = np.log1p(before.astype(np.float64) / np.maximum(before.sum(axis=1, keepdims=True), 1) * 1e4)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert (out[7] == 0).all()


# ------------------------------------------------------------------------------------------------------
# cross-validation folds


@pytest.mark.parametrize("k,n,slab", [(4, 8, True), (3, 7, False), (2, 6, False), (2, 4, True)])
def test_every_section_is_tested_exactly_once_over_the_folds(k, n, slab):
    import dataclasses

    from alphastomics.config import DatasetConfig
    from alphastomics.data.splits import fold_splits

    names = [f"s{i:02d}" for i in range(n)]
    tested = []
    for i in range(1, k + 1):
        split = fold_splits(names, dataclasses.replace(DatasetConfig(), fold=i, num_folds=k), slab, "x")
        assert "train" in split.values() and set(split) == set(names)
        tested += [s for s, v in split.items() if v == "test"]
    assert sorted(tested) == names


def test_bdtnp_fold_one_is_the_single_split():
    import dataclasses

    from alphastomics.config import DatasetConfig
    from alphastomics.data.splits import assign_splits, fold_splits

    names = [f"slab{i:02d}" for i in range(8)]
    single = assign_splits(names, DatasetConfig(), True, "x")
    assert fold_splits(names, dataclasses.replace(DatasetConfig(), fold=1, num_folds=4), True, "x") == single


def test_too_many_folds_is_a_one_line_error():
    import dataclasses

    from alphastomics.artifacts import DataError
    from alphastomics.config import DatasetConfig
    from alphastomics.data.splits import fold_splits

    with pytest.raises(DataError, match="set folds to at most 2"):
        fold_splits(["a", "b", "c", "d", "e"], dataclasses.replace(DatasetConfig(), fold=1, num_folds=3), False, "f.h5ad")


@pytest.mark.parametrize("n", [3, 4])
def test_leave_one_section_out_with_validation_cells_tests_each_section_once_and_trains_on_all_others(n):
    from alphastomics.data.splits import fold_splits

    names = [f"s{i}" for i in range(n)]
    cfg = replace(DatasetConfig(), num_folds=n, validation="cells")
    tested = []
    for i in range(1, n + 1):
        split = fold_splits(names, replace(cfg, fold=i), False, "x")
        assert sorted(split.values()) == ["test"] + ["train"] * (n - 1)  # no validation section
        tested += [s for s, v in split.items() if v == "test"]
    assert sorted(tested) == names
    with pytest.raises(DataError, match=f"set folds to at most {n}"):
        fold_splits(names, replace(cfg, fold=1, num_folds=n + 1), False, "x")


def test_validation_cells_are_a_contiguous_patch_of_the_given_share():
    from alphastomics.data.splits import validation_cells

    xy = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    rows = validation_cells(xy, 0.2, seed=3)
    assert len(rows) == 20 and len(np.unique(rows)) == 20
    centre = xy[np.random.default_rng(3).integers(100)]
    inside = ((xy[rows] - centre) ** 2).sum(1).max()
    outside = np.delete(((xy - centre) ** 2).sum(1), rows).min()
    assert inside <= outside  # nearer the seed cell than every training cell
    assert len(validation_cells(xy, 0.0, seed=3)) == 0
    assert len(validation_cells(xy[:2], 0.9, seed=3)) == 1  # one cell stays in training


def test_validation_cells_are_withheld_from_training_and_alone_in_validation(tmp_path: Path) -> None:
    from alphastomics.config import DataConfig
    from alphastomics.data.batches import training_batch
    from alphastomics.evaluation import peers

    adata = toy_adata(n_sections=3, n=40)
    cfg = replace(DCFG, num_folds=3, fold=1, validation="cells", val_fraction=0.25)
    m = preprocess_anndata(adata, cfg, tmp_path / "p")
    assert len(m["splits"]["test"]) == 1 and m["splits"]["val"] == m["splits"]["train"]
    assert m["validation"]["cells"] == {s: 10 for s in m["splits"]["train"]}
    data = ProcessedData(tmp_path / "p")
    val_ids, train_ids = set(), set()
    for s in data.splits["train"]:
        whole = data.section(s)
        val, train = data.part(s, "val"), data.part(s, "train")
        assert len(val) == 10 and len(train) == 30
        assert set(val.cell_ids) | set(train.cell_ids) == set(whole.cell_ids)
        val_ids |= set(val.cell_ids)
        train_ids |= set(train.cell_ids)
    seen = set()
    for step in range(6):
        batch = training_batch(data, DataConfig(max_cells=64), 2, seed=0, step=step)
        for b, name in enumerate(batch.sections):
            rows = batch.index[b][batch.mask[b]].numpy()
            seen |= set(data.section(name).cell_ids[rows])
    assert seen == train_ids and not seen & val_ids
    assert sum(len(b.index[b.mask]) for b in eval_batches(data, "val")) == 20
    assert len(data.part(data.splits["test"][0], "test")) == 40  # a tested section stays whole
    peer, _, _ = peers.load(tmp_path / "p")
    assert len(peer.ref_expression) == 60  # peers see the training cells the models see


def test_scaled_values_are_log1p_d_without_library_size_normalisation(tmp_path: Path) -> None:
    adata = toy_adata(counts=True)
    volume = np.random.default_rng(1).uniform(0.5, 2.0, adata.n_obs).astype(np.float32)
    adata.X = adata.X * 7.3 / volume[:, None]  # counts per cell volume: non-integer, values above 30
    m = preprocess_anndata(adata, DCFG, tmp_path / "p")
    assert m["normalization"]["input"] == "scaled" and m["normalization"]["applied"] == "log1p"
    data = ProcessedData(tmp_path / "p")
    s = m["splits"]["train"][0]
    sec = data.section(s)
    rows = np.flatnonzero(adata.obs["section"].to_numpy() == s)
    order = pd.Index(adata.obs_names[rows]).get_indexer(sec.cell_ids)
    np.testing.assert_allclose(undo_normalization(sec.expression, m), np.log1p(adata.X[rows][order]),
                               rtol=1e-4, atol=1e-4)
    small = toy_adata(counts=False)
    small.X = np.abs(small.X)  # non-integer, non-negative, below 30: already normalised, kept
    assert preprocess_anndata(small, DCFG, tmp_path / "q")["normalization"]["applied"] == "none"
