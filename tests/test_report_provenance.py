"""The report's provenance shows each data set as preprocess really ran it (issue 13): its manifest's
configuration, gene selection, the workflow's overrides for it, and the user's source file with its sha256."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

from alphastomics.analysis.report_provenance import provenance
from alphastomics.analysis.runs import Run
from alphastomics.config import DatasetConfig
from alphastomics.data.fetch import fetch_user_files
from alphastomics.data.preprocess import preprocess
from alphastomics.layout import run_folder


def test_provenance_shows_the_data_set_configuration_and_the_source_file_checksum(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.poisson(2.0, (90, 30)).astype(np.float32),
                   obs=pd.DataFrame({"slice": np.repeat(["a", "b", "c"], 30)}, index=[f"c{i}" for i in range(90)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(30)]))
    a.obsm["xy"] = rng.uniform(0, 10, (90, 2))
    src = tmp_path / "lab.h5ad"
    a.write_h5ad(src)
    dcfg = DatasetConfig(name="lab", source="h5ad", path=str(src), coordinate_key="xy", section_key="slice", n_top_genes=8)
    info = fetch_user_files(tmp_path / "raw", dcfg)
    results = tmp_path / "results"
    preprocess(tmp_path / "raw", dcfg, results / "data" / "lab" / "processed")
    run = Run(run_folder(results, "lab", "linear", 0), "lab", "linear", 0)  # manifests are found beside it
    snapshot = tmp_path / "config.yaml"
    snapshot.write_text(yaml.safe_dump({"datasets": {"lab": {"dataset": {"source": "h5ad"},
                                                               "overrides": {"training": {"max_steps": 200}}}}}))
    prov = provenance([run], None, snapshot)
    sha = info["files"]["lab.h5ad"]
    assert prov["checksums"] == {"lab": {str(src.resolve()): sha}}
    as_run = yaml.safe_load(prov["config_text"])["datasets_as_run"]["lab"]
    assert as_run["dataset"]["path"] == str(src) and as_run["dataset"]["coordinate_key"] == "xy"
    assert as_run["dataset"]["n_top_genes"] == 8 and as_run["genes"] == as_run["gene_selection"]["selected"] >= 8
    assert as_run["gene_selection"]["method"] == "highly_variable_genes" and as_run["gene_selection"]["from_genes"] == 30
    assert as_run["overrides"] == {"training": {"max_steps": 200}}
    assert as_run["source_sha256"] == {"lab.h5ad": sha}
    assert prov["config_text"].startswith(snapshot.read_text())  # the workflow config as given, then the data sets


def test_training_devices_and_torch_come_from_the_training_jobs(tmp_path: Path) -> None:
    """On a cluster the report runs on the login node: the devices and torch it shows are those each training
    job recorded in train_summary.json ("machine"), not the report environment's."""
    from alphastomics.analysis.runs import Run
    from alphastomics.provenance import machine

    gpu_job = {"host": "gpu017", "cpu": "Xeon", "gpus": ["NVIDIA A100-SXM4-80GB"], "torch": "2.5.1",
               "cuda": "12.4", "python": "3.11.9"}
    runs = [Run(tmp_path / "a", "d", "linear", 0, summary={"device": "cuda:0", "machine": gpu_job}),
            Run(tmp_path / "b", "d", "softmax", 0, summary={"device": "cuda x 2", "machine": gpu_job}),
            Run(tmp_path / "c", "d", "peer_knn", 0)]
    prov = provenance(runs, None, None)
    assert prov["train_devices"] == "cuda x 2 (NVIDIA A100-SXM4-80GB); cuda:0 (NVIDIA A100-SXM4-80GB)"
    assert prov["torch"] == "2.5.1, CUDA 12.4"
    # Without summaries the report says whose torch it shows.
    assert provenance(runs[2:], None, None)["torch"].endswith("(report environment)")
    # What a job records: this process's host and torch.
    import torch

    here = machine()
    assert here["torch"] == torch.__version__ and here["host"] and isinstance(here["gpus"], list)


# --------------------------------------------------------------------------------------------------------
# How long a make target took (stage timing; docs/results.md shows it beside the verdict it belongs to)


def _snakemake_log(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "2026-12-06T102451.snakemake.log").write_text(text)


def test_the_time_of_a_target_is_recorded_beside_the_verdict_it_wrote(tmp_path: Path, monkeypatch) -> None:
    from alphastomics.__main__ import main as cli
    from alphastomics.analysis import timing as P

    verdict = tmp_path / "results" / "tissues" / "verdict.json"
    verdict.parent.mkdir(parents=True)
    started = time.time() - 5
    verdict.write_text('{"schema": "alphastomics.verdict/1"}')
    _snakemake_log(tmp_path / ".snakemake" / "log", "Job 3\n1 of 256 steps (0.4%) done\n...\n256 of 256 steps (100%) done\n")
    r = P.record_time(verdict, "make tissues", started, set_up=True, cores=2, log_dir=tmp_path / ".snakemake" / "log",
                      now=started + 3492.4)
    assert r["seconds"] == 3492 and r["set_up_included"] and r["snakemake_jobs"] == 256 and r["cores"] == 2
    assert r["verdict_sha256"] == hashlib.sha256(verdict.read_bytes()).hexdigest()
    assert P.read_time(verdict) == r
    # the verdict rewritten since: the record no longer times it
    verdict.write_text('{"schema": "alphastomics.verdict/1", "baseline": "linear"}')
    assert P.read_time(verdict) is None
    # the CLI stage (what the Makefile calls), in the project folder
    monkeypatch.chdir(tmp_path)
    assert cli(["timing", "--verdict", str(verdict), "--target", "make tissues", "--started", str(started),
                "--set-up", "false"]) == 0
    again = P.read_time(verdict)
    assert again["target"] == "make tissues" and not again["set_up_included"] and again["snakemake_jobs"] == 256


def test_a_target_with_nothing_to_do_leaves_the_earlier_time_as_it_is(tmp_path: Path) -> None:
    from alphastomics.analysis import timing as P

    verdict = tmp_path / "verdict.json"
    verdict.write_text("{}")
    first = P.record_time(verdict, "make run", verdict.stat().st_mtime - 60, set_up=False, cores=2,
                          log_dir=tmp_path, now=verdict.stat().st_mtime + 1)
    assert first["snakemake_jobs"] is None  # no Snakemake log: the job count is not claimed
    # make run again later: Snakemake had nothing to do, so the verdict predates this invocation
    assert P.record_time(verdict, "make run", time.time() + 10, set_up=False, cores=2, log_dir=tmp_path) is None
    assert P.read_time(verdict) == first
