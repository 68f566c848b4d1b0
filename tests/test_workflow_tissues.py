"""The real-tissue campaign (config/tissues.yaml) end to end at a few steps: both cortices fetched from the
mirror (../shared/data, as in CI), read by their readers (MOp csv tables, STARmap R data), cut into
leave-sections-out folds with validation cells, trained, sampled as the mean of draws, scored beside the
kNN peer and the expression ceiling, and reported across tissues."""

from __future__ import annotations

import json

import pytest
import yaml
from workflow_helpers import REPO, SHARED, make_copy, snakemake

pytestmark = [pytest.mark.workflow,
              pytest.mark.skipif(not (SHARED / "data" / "starmap_mpfc").is_dir(),
                                 reason="../shared/data (the mirror of the published files) is not beside the checkout")]

TINY = {
    "data": {"max_cells": 64},
    "TransformerLayer_setting": {"d_model": 16, "num_layers": 1, "num_heads": 2, "time_embed_dim": 16},
    "training": {"max_steps": 4, "warmup_steps": 1, "val_every": 2, "val_batches": 1, "checkpoint_every": 2,
                 "log_every": 1},
    "diffusion": {"sampling_steps": 3},
}


@pytest.fixture(scope="module")
def tissues_run(tmp_path_factory):
    repo = make_copy(tmp_path_factory.mktemp("tissues"))
    cfg = yaml.safe_load((REPO / "config" / "tissues.yaml").read_text())
    cfg["overrides"] = {**cfg["overrides"], **TINY, "evaluation": {"sampling_draws": 2, "placement": "mean",
                                                                     "num_random_references": 1}}
    for entry in cfg["datasets"].values():
        entry["folds"] = 2  # two folds of each tissue: every section tested once, in 4 trainings
        entry.pop("overrides", None)  # the tiny sizes of TINY, not MOp's crop size
    cfg.update(variants={"gated_headwise": {}}, seeds=[0], baselines=["knn", "ceiling"],
               verdict={"contrasts": [], "primary_metrics": ["knn_preservation"]})
    cfg.pop("verdict")
    (repo / "config" / "tiny_tissues.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(repo, "--profile", "workflow/profiles/default", "--cores", "2", "--configfile", "config/tiny_tissues.yaml")
    return repo


def test_both_tissues_run_from_the_mirror_with_every_section_tested_once(tissues_run):
    res = tissues_run / "results"
    for name, sections, n_genes in (("mop", 4, 254), ("starmap", 3, 166)):
        fetched = json.loads((res / f"data/{name}/raw/fetch.json").read_text())
        assert fetched["source"] in ("csv", "rdata") and len(fetched["files"]) == (4 if name == "mop" else 1)
        tested = []
        for fold in (1, 2):
            m = json.loads((res / f"data/{name}_fold{fold}/processed/manifest.json").read_text())
            assert m["n_genes"] == n_genes and len(m["sections"]) == sections
            assert m["validation"]["method"] == "cells" and m["splits"]["val"] == m["splits"]["train"]
            tested += m["splits"]["test"]
            for run in ("gated_headwise", "peer_knn", "peer_ceiling"):
                assert (res / f"{name}_fold{fold}/{run}/seed0/eval/metrics.json").is_file()
        assert sorted(tested) == sorted(m["sections"])
    mop = json.loads((res / "data/mop_fold1/processed/manifest.json").read_text())
    assert mop["normalization"]["input"] == "scaled" and mop["coordinates"]["units"] == "microns"
    starmap = json.loads((res / "data/starmap_fold1/processed/manifest.json").read_text())
    assert starmap["normalization"]["input"] == "counts" and starmap["annotations"] == ["layer"]


def test_the_report_puts_the_tissues_side_by_side(tissues_run):
    verdict = json.loads((tissues_run / "results/tissues/verdict.json").read_text())
    kinds = {d["dataset"]: d["kind"] for d in verdict["across_tissues"]["datasets"]}
    assert kinds == {"mop": "real sections", "starmap": "real sections"}
    missing = verdict["across_tissues"]["not_run"]  # make run's verdict (bdtnp, synthetic) is not in this copy
    assert missing and "make run" in missing[0]["message"]
    assert (tissues_run / "results/tissues/report.html").is_file()
