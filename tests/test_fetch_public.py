"""Public data sets named by address and sha256 (dataset.files): the mirror, the download (against a local
HTTP server), the csv reader with named columns, R data through config keys, and the two shipped data sets
(config/datasets_public.yaml) read from ../shared/data and preprocessed."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from alphastomics.__main__ import main as cli
from alphastomics.artifacts import DataError
from alphastomics.config import DatasetConfig, RDataConfig, RemoteFile, load_config
from alphastomics.data.batches import ProcessedData
from alphastomics.data.fetch import MIRROR_ENV, fetch_bdtnp, fetch_public
from alphastomics.data.preprocess import preprocess
from alphastomics.data.raw import _r_matrix, open_raw

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MOP_CELLS = {"MERFISH_dataset1_slice1": 2109, "MERFISH_dataset1_slice10": 2156,
             "MERFISH_dataset1_slice21": 1794, "MERFISH_dataset1_slice200": 1865}
STARMAP_LAYERS = {  # ../shared/data/starmap_mpfc/README.md: cells per layer L1 / L2/3 / L5 / L6
    "20180417_BZ5_control": [86, 167, 449, 347],
    "20180419_BZ9_control": [82, 115, 503, 353],
    "20180424_BZ14_control": [34, 158, 435, 461],
}


def public_dataset(name: str, **changes) -> DatasetConfig:
    """A block of config/datasets_public.yaml as the package reads it (plus ``changes``)."""
    block = yaml.safe_load((REPO / "config" / "datasets_public.yaml").read_text())["datasets"][name]["dataset"]
    return load_config(None, {"dataset": {**block, "name": name, **changes}}).dataset


def readme_sha256(folder: str) -> dict[str, str]:
    """file name -> sha256 as the README of a shared data folder states it."""
    text = (SHARED_DATA / folder / "README.md").read_text()
    table = dict(re.findall(r"^\| (\S+\.csv) +\|[^\n]*\| ([0-9a-f]{64}) \|$", text, re.M))  # MOp: a table
    if table:
        return table
    return {"starmap_mpfc.RData": re.search(r"sha256 ([0-9a-f]{64})", text).group(1)}  # STARmap: a sentence


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mop_merfish").is_dir() or not (SHARED_DATA / "starmap_mpfc").is_dir():
        pytest.skip(f"shared public data not found at {SHARED_DATA} (mop_merfish, starmap_mpfc)")
    return SHARED_DATA


def one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, text
    return text


def nothing_left(folder: Path) -> bool:
    return not any(p.name.startswith((".raw", "raw")) for p in folder.iterdir())


# --------------------------------------------------------------------------------------------------------
# The real files: readers, checksums, fetch + preprocess


def test_mop_tables_read_through_named_columns(shared_data: Path, tmp_path: Path) -> None:
    dcfg = public_dataset("mop")
    assert {f.name: f.sha256 for f in dcfg.files} == readme_sha256("mop_merfish")
    info = fetch_public(tmp_path / "raw", dcfg, shared_data)
    assert info["files"] == readme_sha256("mop_merfish")
    assert set(info["paths"].values()) == {str((shared_data / "mop_merfish" / f.name).resolve()) for f in dcfg.files}
    raw = open_raw(tmp_path / "raw", dcfg)
    assert {s.name: s.n_cells for s in raw.sections} == MOP_CELLS
    assert len(raw.genes) == 254 and raw.dims == 2
    assert not {"index", "cell_volume", "pos_x", "pos_y"} & set(raw.genes)
    first = raw.sections[0]
    assert first.cell_ids[0] == "8e4f0f1d-770c-4f76-9f37-8ed31fbf4f4a"
    np.testing.assert_allclose(first.coords[0], [3891.1488871796, 1409.5325244069104])
    assert first.load().shape == (2109, 254) and first.cell_types is None


def test_starmap_rdata_read_through_config_keys(shared_data: Path, tmp_path: Path) -> None:
    dcfg = public_dataset("starmap")
    assert {f.name: f.sha256 for f in dcfg.files} == readme_sha256("starmap_mpfc")
    info = fetch_public(tmp_path / "raw", dcfg, shared_data)
    assert info["files"] == readme_sha256("starmap_mpfc")
    raw = open_raw(tmp_path / "raw", dcfg)
    assert {s.name: s.n_cells for s in raw.sections} == {k: sum(v) for k, v in STARMAP_LAYERS.items()}
    assert len(raw.genes) == 166 and raw.genes[:2] == ["Acss1", "Adcyap1"]
    assert len({t for s in raw.sections for t in s.cell_types}) == 15
    for s in raw.sections:
        levels, counts = np.unique(s.annotations["layer"].astype(str), return_counts=True)
        assert list(levels) == ["1", "2", "3", "4"] and list(counts) == STARMAP_LAYERS[s.name]
    bz5 = raw.sections[0]
    assert bz5.cell_ids[0] == "69x4486"
    np.testing.assert_allclose(bz5.coords[0], [68.863744, 4486.028897], rtol=1e-6)
    x = bz5.load()
    assert x.shape == (1049, 166) and (x == np.floor(x)).all() and x.sum() > 0  # integer counts, cells x genes


def test_fetch_and_preprocess_both_public_data_sets(shared_data: Path, tmp_path: Path) -> None:
    for name, sections, genes in (("mop", list(MOP_CELLS), 254), ("starmap", list(STARMAP_LAYERS), 166)):
        dcfg = public_dataset(name)
        fetch_public(tmp_path / name / "raw", dcfg, shared_data)
        m = preprocess(tmp_path / name / "raw", dcfg, tmp_path / name / "processed")
        assert m["sections"] == sections and m["n_genes"] == genes and m["dims"] == 2
        assert m["coordinates"]["units"] == {"mop": "microns", "starmap": "pixels"}[name]
        data = ProcessedData(tmp_path / name / "processed")
        assert data.sections == sections and data.section(sections[0]).positions.shape[1] == 2
        table = pq.read_table(tmp_path / name / "processed" / "cells.parquet")
        if name == "mop":
            assert m["annotations"] == [] and m["cell_types"] is None
            assert not any(c.startswith("annotation_") for c in table.column_names)
        else:
            assert m["annotations"] == ["layer"] and len(m["cell_types"]) == 15
            layer = table.column("annotation_layer").combine_chunks()
            assert layer.dictionary.to_pylist() == ["1", "2", "3", "4"] and layer.null_count == 0
            cells = table.select(["section", "annotation_layer"]).to_pandas()
            per_layer = cells.groupby(["section", "annotation_layer"], observed=True).size()
            for sec, counts in STARMAP_LAYERS.items():
                assert list(per_layer[sec]) == counts


def test_bdtnp_takes_the_mirror_before_downloading(bdtnp_dir: Path, tmp_path: Path) -> None:
    info = fetch_bdtnp(tmp_path / "raw", None, bdtnp_dir)  # would need PyPI without the mirror
    assert info["origin"] == str(bdtnp_dir.resolve()) and (tmp_path / "raw" / "dge.txt").is_file()


# --------------------------------------------------------------------------------------------------------
# R data: wrong keys name the file, the object or column, and the key to fix


@pytest.mark.parametrize(("changes", "parts"), [
    ({"rdata": {"counts": "starmap_cnt", "obs": "starmap_info", "per_section": True, "genes_by_cells": True}},
     ["starmap_mpfc.RData: no object 'starmap_cnt' (has: starmap_cnts, starmap_info); set dataset.rdata.counts"]),
    ({"rdata": {"counts": "starmap_cnts", "per_section": True, "genes_by_cells": True}},
     ["dataset.rdata.obs is not set", "starmap_info"]),
    ({"coordinate_obs": ["x", "yy"]},
     ['starmap_info[["20180417_BZ5_control"]] column(s) [\'yy\'] not found', "set dataset.coordinate_obs"]),
    ({"annotation_keys": {"layer": "zz"}}, ["column 'zz' not found", "fix dataset.annotation_keys.layer"]),
    ({"rdata": {"counts": "starmap_cnts", "obs": "starmap_info", "per_section": False, "genes_by_cells": True}},
     ["starmap_cnts is a named list, not a matrix", "set dataset.rdata.per_section: true"]),
    ({"rdata": {"counts": "starmap_cnts", "obs": "starmap_info", "per_section": True}},
     ["has 166 cells", "set dataset.rdata.genes_by_cells: true"]),
])
def test_rdata_key_errors_name_file_object_and_fix(shared_data: Path, tmp_path: Path, changes, parts) -> None:
    dcfg = public_dataset("starmap", **changes)
    with pytest.raises(DataError) as err:
        fetch_public(tmp_path / "raw", dcfg, shared_data)
    one_line_error(err, "starmap_mpfc.RData", *parts)
    assert nothing_left(tmp_path)


def test_rds_named_list_with_a_section_column(tmp_path: Path) -> None:
    rdata = pytest.importorskip("rdata")
    if not hasattr(rdata, "write_rds"):
        pytest.skip("this rdata cannot write .rds files")
    ids = [f"c{i}" for i in range(6)]
    counts = pd.DataFrame(np.arange(18, dtype=np.int32).reshape(6, 3), index=ids, columns=["g1", "g2", "g3"])
    obs = pd.DataFrame({"px": np.arange(6.0), "py": np.arange(6.0) % 2, "slice": ["a"] * 3 + ["b"] * 3,
                        "region": pd.Categorical(["r1", "r2", "r1", "r1", "r2", "r2"])}, index=ids)
    src = tmp_path / "src"
    src.mkdir()
    rdata.write_rds(src / "cells.rds", {"cnt": counts, "meta": obs})
    dcfg = DatasetConfig(source="rdata", path=str(src / "cells.rds"), rdata=RDataConfig(counts="cnt", obs="meta"),
                         coordinate_obs=("px", "py"), section_key="slice", cell_type_key=None,
                         annotation_keys={"region": "region"}, val_fraction=0.0)
    from alphastomics.data.fetch import fetch_user_files

    fetch_user_files(tmp_path / "raw", dcfg)
    raw = open_raw(tmp_path / "raw", dcfg)
    assert raw.genes == ["g1", "g2", "g3"] and [s.name for s in raw.sections] == ["a", "b"]
    np.testing.assert_array_equal(raw.sections[1].load(), counts.to_numpy()[3:])
    assert list(raw.sections[1].annotations["region"]) == ["r1", "r2", "r2"]
    assert list(raw.sections[0].cell_ids) == ["c0", "c1", "c2"]


def test_dgcmatrix_becomes_sparse_with_dimnames() -> None:
    # Matrix::dgCMatrix as rdata converts an S4 object: its slots as attributes (column-compressed)
    dense = np.array([[0, 2, 0], [1, 0, 3]], dtype=np.float64)  # 2 genes x 3 cells
    s4 = SimpleNamespace(i=np.array([1, 0, 1]), p=np.array([0, 1, 2, 3]), x=np.array([1.0, 2.0, 3.0]),
                         Dim=np.array([2, 3]), Dimnames=[np.array(["ga", "gb"]), np.array(["c1", "c2", "c3"])])
    values, names = _r_matrix(s4, "f.rds", "counts")
    np.testing.assert_array_equal(values.toarray(), dense)
    assert list(names[0]) == ["ga", "gb"] and list(names[1]) == ["c1", "c2", "c3"]


# --------------------------------------------------------------------------------------------------------
# The csv reader with named columns (small tables)


def write_table(path: Path, n: int, seed: int) -> None:
    """A MOp-like table (index, cell_volume, pos_x, pos_y, genes) plus a column `slice` with two sections."""
    rng = np.random.default_rng(seed)
    pd.DataFrame({
        "index": [f"{path.stem}-{i}" for i in range(n)], "cell_volume": rng.uniform(500, 900, n),
        "pos_x": rng.uniform(0, 100, n), "pos_y": rng.uniform(0, 100, n),
        "Otof": rng.uniform(0, 3, n), "Cux2": rng.uniform(0, 3, n), "Rorb": rng.uniform(0, 3, n),
        "slice": np.repeat(["a", "b"], [n // 2, n - n // 2]),
    }).to_csv(path, index=False)


def csv_dataset(files: list[RemoteFile], **changes) -> DatasetConfig:
    """Tables of ``write_table``: one section per file, or by ``section_key="slice"`` within one file."""
    keys = dict(source="csv", files=tuple(files), coordinate_obs=("pos_x", "pos_y"), cell_id_key="index",
                meta_columns=("cell_volume", "slice"), cell_type_key=None, section_key="slice",
                n_top_genes=None, val_fraction=0.0, mirror_folder="tables")
    if len(files) > 1:
        keys["section_key"] = None
    return DatasetConfig(**{**keys, **changes})


def test_csv_named_columns_and_their_errors(tmp_path: Path) -> None:
    (tmp_path / "mirror" / "tables").mkdir(parents=True)
    files = []
    for k in range(2):
        p = tmp_path / "mirror" / "tables" / f"sec{k}.csv"
        write_table(p, 20, k)
        files.append(RemoteFile(p.name, f"http://127.0.0.1:9/{p.name}", hashlib.sha256(p.read_bytes()).hexdigest()))
    fetch_public(tmp_path / "raw", csv_dataset(files), tmp_path / "mirror")
    raw = open_raw(tmp_path / "raw", csv_dataset(files))
    assert raw.genes == ["Otof", "Cux2", "Rorb"] and [s.name for s in raw.sections] == ["sec0", "sec1"]
    assert raw.sections[1].cell_ids[0] == "sec1-0"
    with pytest.raises(DataError) as err:
        fetch_public(tmp_path / "raw2", csv_dataset(files, meta_columns=("volume",)), tmp_path / "mirror")
    one_line_error(err, "sec0.csv", "['volume'] of dataset.meta_columns not found", "cell_volume")
    with pytest.raises(DataError) as err:  # the id column left among the genes
        fetch_public(tmp_path / "raw2", csv_dataset(files, cell_id_key=None), tmp_path / "mirror")
    one_line_error(err, "sec0.csv: column 'index' is not numeric", "dataset.meta_columns")
    with pytest.raises(DataError) as err:
        fetch_public(tmp_path / "raw2", csv_dataset(files, cell_id_key="cell"), tmp_path / "mirror")
    one_line_error(err, "sec0.csv: column 'cell' not found", "set dataset.cell_id_key")
    assert not (tmp_path / "raw2").exists()


# --------------------------------------------------------------------------------------------------------
# The download path, against a local HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes, int]] = {}  # path -> (status, body, declared Content-Length)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status, body, length = self.routes.get(self.path, (404, b"not found", 9))
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True  # a body shorter than Content-Length ends with the connection

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict]]:
    """(base url, routes) of an HTTP server on 127.0.0.1 (ephemeral port); stops after the test, or by itself
    after 60 s."""
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", MIRROR_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    routes: dict[str, tuple[int, bytes, int]] = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    timer = threading.Timer(60, httpd.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    finally:
        timer.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def table(tmp_path: Path) -> tuple[bytes, str]:
    """A small named-column table: (its bytes, its sha256)."""
    write_table(tmp_path / "t.csv", 30, 0)
    body = (tmp_path / "t.csv").read_bytes()
    (tmp_path / "t.csv").unlink()
    return body, hashlib.sha256(body).hexdigest()


def test_download_writes_verified_files_and_fetch_json(server, table, tmp_path: Path) -> None:
    url, routes = server
    body, sha = table
    routes["/pub/slice1.csv"] = (200, body, len(body))
    dcfg = csv_dataset([RemoteFile("slice1.csv", f"{url}/pub/slice1.csv", sha)])
    fetch_public(tmp_path / "raw", dcfg, None)
    info = json.loads((tmp_path / "raw" / "fetch.json").read_text())
    assert info["files"] == {"slice1.csv": sha} and info["urls"] == {"slice1.csv": f"{url}/pub/slice1.csv"}
    assert info["paths"] == info["urls"] and info["mirror"] is None and info["source"] == "csv"
    assert (tmp_path / "raw" / "slice1.csv").read_bytes() == body
    assert [s.n_cells for s in open_raw(tmp_path / "raw", dcfg).sections] == [15, 15]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["fetch.json", "slice1.csv"]


@pytest.mark.parametrize(("route", "parts"), [
    ("mismatch", ["sha256 mismatch (expected", "other bytes than the published file", "fix dataset.files"]),
    ("truncated", ["ended early", "truncated body", "retry"]),
    ("missing", ["download failed (HTTP 404)", "fix the url in dataset.files"]),
    ("refused", ["cannot download", "no network"]),
])
def test_download_failures_are_one_line_and_leave_nothing(server, table, tmp_path: Path, route, parts) -> None:
    url, routes = server
    body, sha = table
    routes["/mismatch.csv"] = (200, body.replace(b"Otof", b"Otoz"), len(body))
    routes["/truncated.csv"] = (200, body[: len(body) // 2], len(body))
    if route == "refused":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    dcfg = csv_dataset([RemoteFile("slice1.csv", f"{url}/{route}.csv", sha)])
    with pytest.raises(DataError) as err:
        fetch_public(tmp_path / "raw", dcfg, tmp_path / "mirror")  # the mirror lacks the file
    text = one_line_error(err, "slice1.csv: ", f"{url}/{route}.csv", *parts)
    assert "data_mirror" in text and MIRROR_ENV in text and str(tmp_path / "mirror" / "tables") in text
    assert not (tmp_path / "raw").exists() and nothing_left(tmp_path)


def test_mirror_wins_over_the_url_and_a_wrong_copy_is_refused(server, table, tmp_path: Path) -> None:
    url, _ = server  # serves nothing: every download would be a 404
    body, sha = table
    (tmp_path / "mirror" / "tables").mkdir(parents=True)
    copy = tmp_path / "mirror" / "tables" / "slice1.csv"
    copy.write_bytes(body)
    dcfg = csv_dataset([RemoteFile("slice1.csv", f"{url}/slice1.csv", sha)])
    info = fetch_public(tmp_path / "raw", dcfg, tmp_path / "mirror")
    assert info["paths"] == {"slice1.csv": str(copy.resolve())} and info["mirror"] == str(copy.parent.resolve())

    copy.write_bytes(body + b"\n")
    with pytest.raises(DataError) as err:
        fetch_public(tmp_path / "raw2", dcfg, tmp_path / "mirror")
    one_line_error(err, f"slice1.csv: sha256 mismatch (expected {sha}", str(copy), "delete it", MIRROR_ENV)
    assert not (tmp_path / "raw2").exists()


def test_cli_mirror_flag_then_environment_variable(server, table, tmp_path: Path, monkeypatch) -> None:
    url, _ = server
    body, sha = table
    for name in ("flag", "env"):
        (tmp_path / name / "tables").mkdir(parents=True)
        (tmp_path / name / "tables" / "slice1.csv").write_bytes(body)
    files = json.dumps([{"name": "slice1.csv", "url": f"{url}/slice1.csv", "sha256": sha}])
    sets = ["--set", "dataset.source=csv", "--set", f"dataset.files={files}", "--set", "dataset.mirror_folder=tables",
            "--set", "dataset.coordinate_obs=[pos_x, pos_y]", "--set", "dataset.cell_id_key=index",
            "--set", "dataset.meta_columns=[cell_volume, slice]", "--set", "dataset.section_key=slice",
            "--set", "dataset.val_fraction=0.0"]
    assert cli(["fetch-data", "--out", str(tmp_path / "raw0"), *sets]) == 2  # no mirror: the url 404s
    assert not (tmp_path / "raw0").exists()
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "env"))
    assert cli(["fetch-data", "--out", str(tmp_path / "raw1"), *sets]) == 0
    origin = json.loads((tmp_path / "raw1" / "fetch.json").read_text())["paths"]["slice1.csv"]
    assert origin == str((tmp_path / "env" / "tables" / "slice1.csv").resolve())
    assert cli(["fetch-data", "--out", str(tmp_path / "raw2"), "--mirror", str(tmp_path / "flag"), *sets]) == 0
    origin = json.loads((tmp_path / "raw2" / "fetch.json").read_text())["paths"]["slice1.csv"]
    assert origin == str((tmp_path / "flag" / "tables" / "slice1.csv").resolve())


def test_bad_file_entries_are_config_errors(tmp_path: Path) -> None:
    ok = "0" * 64
    for files, part in (([RemoteFile("a/b.csv", "u", ok)], "give a plain file name"),
                        ([RemoteFile("b.csv", "u", "abc")], "give the 64 hex digits"),
                        ([RemoteFile("b.csv", "u", ok)] * 2, "names 'b.csv' twice")):
        with pytest.raises(DataError) as err:
            fetch_public(tmp_path / "raw", csv_dataset(files), None)
        one_line_error(err, "dataset.files", part)
    assert not (tmp_path / "raw").exists()


@pytest.mark.workflow
def test_workflow_passes_the_mirror_environment_variable_over_data_mirror(tmp_path: Path) -> None:
    from workflow_helpers import dry_run, make_copy, snakemake, write_config

    repo = make_copy(tmp_path)
    public = yaml.safe_load((REPO / "config" / "datasets_public.yaml").read_text())["datasets"]
    config = write_config(repo, "public.yaml", lambda c: c.update(datasets=public, data_mirror="my/mirror"))
    _, out = dry_run(repo, "--configfile", config, "-p", "--until", "fetch_data")
    commands = [line for line in out.splitlines() if "alphastomics fetch-data" in line]
    assert len(commands) == 2 and all("--mirror my/mirror " in c for c in commands)
    proc = snakemake(repo, "-n", "-p", "--cores", "1", "--configfile", config, "--until", "fetch_data",
                     env={MIRROR_ENV: "/lab/mirror"})
    commands = [line for line in proc.stdout.splitlines() if "alphastomics fetch-data" in line]
    assert len(commands) == 2 and all("--mirror /lab/mirror " in c for c in commands)
