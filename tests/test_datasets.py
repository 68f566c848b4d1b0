"""fetch-data and the raw readers: bdtnp checksums and slabs, the synthetic tissue, h5ad/csv readers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import pdist

from alphastomics.artifacts import DataError
from alphastomics.config import DatasetConfig, SyntheticConfig
from alphastomics.data.fetch import BDTNP_FILES, fetch_bdtnp, fetch_user_files
from alphastomics.data.raw import open_raw
from alphastomics.data.synthetic import generate_synthetic


def test_bdtnp_fetch_from_local_copy_records_verified_checksums(bdtnp_dir: Path, tmp_path: Path) -> None:
    info = fetch_bdtnp(tmp_path / "raw", bdtnp_dir)
    recorded = json.loads((tmp_path / "raw" / "fetch.json").read_text())
    assert recorded == info and recorded["source"] == "bdtnp"
    for name, sha in BDTNP_FILES.items():
        assert hashlib.sha256((tmp_path / "raw" / name).read_bytes()).hexdigest() == sha == recorded["files"][name]


def test_bdtnp_checksum_mismatch_names_file_and_hashes_and_leaves_nothing(bdtnp_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "copy"
    shutil.copytree(bdtnp_dir, tampered)
    (tampered / "geometry.txt").chmod(0o644)
    with open(tampered / "geometry.txt", "a") as f:
        f.write("0 0 0\n")
    actual = hashlib.sha256((tampered / "geometry.txt").read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        fetch_bdtnp(tmp_path / "raw", tampered)
    msg = str(err.value)
    assert "\n" not in msg and "geometry.txt" in msg and BDTNP_FILES["geometry.txt"] in msg and actual in msg
    assert not (tmp_path / "raw").exists() and list(tmp_path.iterdir()) == [tampered]


def test_bdtnp_reader_pairs_rows_keeps_gene_names_and_cuts_equal_count_slabs(bdtnp_dir: Path, tmp_path: Path) -> None:
    fetch_bdtnp(tmp_path / "raw", bdtnp_dir)
    raw = open_raw(tmp_path / "raw", DatasetConfig(source="bdtnp", num_slabs=8, slab_axis="x"))
    header = (bdtnp_dir / "dge.txt").read_text().split("\n", 1)[0].split("\t")
    assert raw.genes == header and len(raw.genes) == 84 and raw.dims == 3 and raw.slab_cut
    sizes = [s.n_cells for s in raw.sections]
    assert sum(sizes) == 3039 and max(sizes) - min(sizes) <= 1
    assert [s.name for s in raw.sections] == [f"slab{i:02d}" for i in range(8)]
    for a, b in zip(raw.sections, raw.sections[1:]):  # slabs are ordered, non-overlapping along x
        assert a.coords[:, 0].max() <= b.coords[:, 0].min()
    # row pairing: the first geometry row is cell 0 of dge.txt
    first = pd.read_csv(bdtnp_dir / "geometry.txt", sep=" ", nrows=1).to_numpy()[0]
    all_ids = np.concatenate([s.cell_ids for s in raw.sections])
    all_xyz = np.concatenate([s.coords for s in raw.sections])
    np.testing.assert_array_equal(all_xyz[list(all_ids).index("cell0000")], first)


def test_synthetic_is_deterministic_and_seed_dependent() -> None:
    cfg = SyntheticConfig(num_sections=3, min_cells=50, max_cells=80, num_genes=15, num_cell_types=3, seed=3)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    c = generate_synthetic(SyntheticConfig(**{**cfg.__dict__, "seed": 4}))
    assert a.n_obs != c.n_obs or not np.array_equal(a.X, c.X)
    counts = a.obs["section"].value_counts()
    assert len(counts) == 3 and counts.between(50, 80).all()
    assert np.array_equal(a.X, np.floor(a.X)) and (a.X >= 0).all()
    assert set(a.obs["cell_type"]) <= {"type0", "type1", "type2"}


@pytest.mark.parametrize("dims", [2, 3])
def test_synthetic_sections_are_rigid_scaled_copies_of_the_tissue_frame(dims: int) -> None:
    a = generate_synthetic(SyntheticConfig(num_sections=2, min_cells=40, max_cells=60, num_genes=10, dims=dims))
    assert a.obsm["spatial"].shape[1] == dims
    for s in a.obs["section"].unique():
        m = (a.obs["section"] == s).to_numpy()
        ratio = pdist(a.obsm["spatial"][m]) / pdist(a.obsm["tissue_frame"][m])
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)  # rotation + one size factor + offset


def test_csv_reader_reads_luna_columns(tmp_path: Path) -> None:
    df = pd.DataFrame({
        "coord_X": [0.0, 1.0, 2.0, 3.0], "coord_Y": [0.0, 1.0, 0.0, 1.0],
        "cell_section": ["a", "a", "b", "b"], "cell_class": ["t1", "t2", "t1", ""],
        "g1": [1, 2, 3, 4], "g2": [0, 0, 5, 1],
    })
    df.to_csv(tmp_path / "cells.csv", index=False)
    dcfg = DatasetConfig(source="csv", path=str(tmp_path / "cells.csv"), val_fraction=0.0)  # 2 sections
    fetch_user_files(tmp_path / "raw", dcfg)
    raw = open_raw(tmp_path / "raw", dcfg)
    assert raw.genes == ["g1", "g2"] and raw.dims == 2 and [s.name for s in raw.sections] == ["a", "b"]
    np.testing.assert_array_equal(raw.sections[1].load(), [[3, 5], [4, 1]])
    assert list(raw.sections[1].cell_types) == ["t1", None]


def test_h5ad_folder_is_one_section_per_file_on_shared_genes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, genes in (("s1", ["a", "b", "c"]), ("s2", ["c", "x", "a"])):
        x = np.arange(9, dtype=np.float32).reshape(3, 3) + (0 if name == "s1" else 100)
        adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
        adata.obs_names = [f"{name}_{i}" for i in range(3)]
        adata.obsm["spatial"] = np.random.default_rng(0).normal(size=(3, 2))
        adata.write_h5ad(src / f"{name}.h5ad")
    dcfg = DatasetConfig(source="h5ad", path=str(src), val_fraction=0.0)  # 2 sections
    fetch_user_files(tmp_path / "raw", dcfg)
    raw = open_raw(tmp_path / "raw", dcfg)
    assert raw.genes == ["a", "c"] and [s.name for s in raw.sections] == ["s1", "s2"]
    np.testing.assert_array_equal(raw.sections[0].load()[:, 1], [2, 5, 8])  # gene c of s1
    np.testing.assert_array_equal(raw.sections[1].load(), [[102, 100], [105, 103], [108, 106]])  # a, c of s2


def test_h5ad_annotation_keys_keep_extra_labels_and_name_a_missing_column(tmp_path: Path) -> None:
    adata = ad.AnnData(np.ones((6, 2), np.float32), var=pd.DataFrame(index=["g1", "g2"]))
    adata.obs_names = [f"c{i}" for i in range(6)]
    adata.obs["section"] = ["a"] * 3 + ["b"] * 3
    adata.obs["layer"] = pd.Categorical(["L1", "L2", "L1", "L2", None, "L2"])
    adata.obsm["spatial"] = np.random.default_rng(0).normal(size=(6, 2))
    adata.write_h5ad(tmp_path / "cells.h5ad")
    dcfg = DatasetConfig(source="h5ad", path=str(tmp_path / "cells.h5ad"), val_fraction=0.0,
                         annotation_keys={"cortical_layer": "layer"})
    fetch_user_files(tmp_path / "raw", dcfg)
    raw = open_raw(tmp_path / "raw", dcfg)
    layers = [list(s.annotations["cortical_layer"]) for s in raw.sections]
    assert layers == [["L1", "L2", "L1"], ["L2", None, "L2"]]
    from alphastomics.data.preprocess import preprocess

    manifest = preprocess(tmp_path / "raw", dcfg, tmp_path / "processed")
    assert manifest["annotations"] == ["cortical_layer"] and manifest["coordinates"]["units"] is None
    column = pq.read_table(tmp_path / "processed" / "cells.parquet").column("annotation_cortical_layer")
    assert column.to_pylist() == ["L1", "L2", "L1", "L2", None, "L2"]
    bad = DatasetConfig(source="h5ad", path=str(tmp_path / "cells.h5ad"), annotation_keys={"layer": "layers"})
    with pytest.raises(DataError) as err:
        fetch_user_files(tmp_path / "raw2", bad)
    message = str(err.value)
    assert "\n" not in message and "cells.h5ad: obs column 'layers' not found" in message
    assert "fix dataset.annotation_keys.layer" in message and not (tmp_path / "raw2").exists()
