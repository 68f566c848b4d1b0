"""The Snakemake workflow's tiny local run: every output, reruns of single stages, the small conda
environments, forced reruns. Dry runs and small data-stage runs are in tests/test_workflow_dry.py, the
learning gate's end-to-end run in tests/test_workflow_control.py, the tiny run on a real SLURM cluster in
tests/test_slurm.py.

Every run happens in a temporary copy of the repository's workflow/ and config/ (never in its results/),
with ../shared linked beside it as in CI (tests/workflow_helpers.py). The tiny configuration is
config/test.yaml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from workflow_helpers import REPO, dry_run, make_copy, same_weights, snakemake, write_config

pytestmark = pytest.mark.workflow


# --------------------------------------------------------------------------------------------------------
# The tiny run: every output, then reruns of single stages


def expected_outputs(cfg: dict) -> list[str]:
    out = ["results/report.html"]
    for d in cfg["datasets"]:
        out += [f"results/data/{d}/raw/fetch.json", f"results/data/{d}/processed/manifest.json",
                f"results/data/{d}/processed/cells.parquet", f"results/logs/fetch_data/{d}.log",
                f"results/benchmarks/preprocess/{d}.tsv"]
        for s in cfg["seeds"]:
            for v in cfg["variants"]:
                run = f"results/{d}/{v}/seed{s}"
                out += [f"{run}/train/final.pt", f"{run}/train/train_summary.json", f"{run}/train/metrics.jsonl",
                        f"{run}/train/checkpoints", f"{run}/samples.parquet", f"{run}/eval/metrics.json",
                        f"{run}/eval/sections.csv", f"results/logs/train/{d}/{v}/seed{s}.log",
                        f"results/benchmarks/train/{d}/{v}/seed{s}.tsv"]
            for m in cfg["baselines"]:
                run = f"results/{d}/peer_{m}/seed{s}"
                out += [f"{run}/samples.parquet", f"{run}/eval/metrics.json",
                        f"results/logs/baseline/{d}/peer_{m}/seed{s}.log"]
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    repo = make_copy(tmp_path_factory.mktemp("tiny"))
    snakemake(repo, "--profile", "workflow/profiles/default", "--cores", "2", "--configfile", "config/test.yaml")
    return repo


def test_tiny_run_produces_every_output(tiny_run):
    cfg = yaml.safe_load((tiny_run / "config" / "test.yaml").read_text())
    missing = [p for p in expected_outputs(cfg) if not (tiny_run / p).exists()]
    assert missing == []
    metrics = json.loads((tiny_run / "results/synthetic/linear/seed0/eval/metrics.json").read_text())
    assert metrics["method"] == "linear"
    counts, out = dry_run(tiny_run, "--configfile", "config/test.yaml")
    assert counts == {} and "Nothing to be done" in out


def test_snakemake_report_includes_the_comparison_page(tiny_run):
    snakemake(tiny_run, "--configfile", "config/test.yaml", "--report", "workflow_report.html")
    page = (tiny_run / "workflow_report.html").read_text(errors="replace")
    # the page flagged with report() is embedded, with its caption from workflow/report/report.rst
    assert "report.html" in page and "Comparison of every attention variant" in page


def test_rerun_single_stage_with_R_and_U(tiny_run):
    counts, _ = dry_run(tiny_run, "--configfile", "config/test.yaml", "-R", "train", "-U", "train")
    assert counts == {"train": 2}


def test_rerun_one_target_file_with_forcerun(tiny_run):
    target = "results/synthetic/linear/seed0/eval/metrics.json"
    counts, _ = dry_run(tiny_run, "--configfile", "config/test.yaml", "--force", target)
    assert counts == {"evaluate": 1}
    counts, _ = dry_run(tiny_run, "--configfile", "config/test.yaml", "--forcerun", "sample")
    # the forced stage and everything downstream of it, nothing upstream, peers untouched
    assert counts == {"sample": 2, "evaluate": 2, "verdict": 1, "report": 1, "all": 1}


def test_changing_one_variant_reruns_only_that_variant(tiny_run):
    def edit(c):
        c["variants"]["gated_headwise"].setdefault("overrides", {})["training"] = {"learning_rate": 2.0e-3}

    config = write_config(tiny_run, "edited.yaml", edit)
    counts, out = dry_run(tiny_run, "--configfile", config)
    assert counts == {"train": 1, "sample": 1, "evaluate": 1, "verdict": 1, "report": 1, "all": 1}
    jobs = [b for b in out.split("\n\n") if re.search(r"^rule (train|sample|evaluate):", b.strip(), re.M)]
    assert jobs and all("gated_headwise" in b and "/linear/" not in b for b in jobs)


def test_changed_variant_retrains_from_scratch(tiny_run, tmp_path):
    """The rerun train job finds the old config's checkpoints, discards them and trains afresh."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_run, repo, symlinks=True)

    def edit(c):
        c["variants"]["gated_headwise"].setdefault("overrides", {})["training"] = {"learning_rate": 2.0e-3}

    snakemake(repo, "--cores", "2", "--configfile", write_config(repo, "edited.yaml", edit))
    final = torch.load(repo / "results/synthetic/gated_headwise/seed0/train/final.pt", weights_only=False)
    assert final["config"]["training"]["learning_rate"] == 2.0e-3
    log = (repo / "results/logs/train/synthetic/gated_headwise/seed0.log").read_text()
    assert "starting this run from scratch" in log


def test_reordering_keys_inside_settings_reruns_nothing(tiny_run):
    def reverse(block):
        return {k: reverse(v) for k, v in reversed(block.items())} if isinstance(block, dict) else block

    def edit(c):
        c["overrides"] = reverse(c["overrides"])
        for entry in list(c["datasets"].values()) + list(c["variants"].values()):
            entry.update(reverse(entry))

    config = write_config(tiny_run, "reordered.yaml", edit)
    assert (tiny_run / config).read_text() != yaml.safe_dump(yaml.safe_load((tiny_run / "config/test.yaml").read_text()), sort_keys=False)
    counts, out = dry_run(tiny_run, "--configfile", config)
    assert counts == {} and "Nothing to be done" in out


@pytest.fixture
def edited_model_yaml(tiny_run):
    """Edit config/model.yaml of the tiny run in place for one test (its path is part of every command)."""
    path = tiny_run / "config" / "model.yaml"
    original = path.read_text()

    def edit(text: str) -> None:
        path.write_text(text)

    yield original, edit
    path.write_text(original)


@pytest.mark.parametrize(
    "edit, expected",
    [
        # an evaluation-only setting: evaluate (models and peers) and the report rerun, nothing upstream
        (lambda c: c["overrides"]["evaluation"].update(num_random_references=2),
         {"evaluate": 3, "verdict": 1, "report": 1, "all": 1}),
        # a sampling-only setting: sample and what follows, no training
        (lambda c: c["overrides"]["diffusion"].update(sampling_steps=5),
         {"sample": 2, "evaluate": 2, "verdict": 1, "report": 1, "all": 1}),
        # a peer setting: the baseline and what follows
        (lambda c: c["overrides"].update(peers={"knn_k": 3}), {"baseline": 1, "evaluate": 1, "verdict": 1, "report": 1, "all": 1}),
        # a training setting of every run: train again (the check that the trigger works at all)
        (lambda c: c["overrides"]["training"].update(learning_rate=1.0e-3),
         {"train": 2, "sample": 2, "evaluate": 2, "verdict": 1, "report": 1, "all": 1}),
    ],
    ids=["evaluation", "sampling", "peers", "training"],
)
def test_an_edit_reruns_only_the_stages_that_read_it(tiny_run, edit, expected):
    counts, _ = dry_run(tiny_run, "--configfile", write_config(tiny_run, "edited.yaml", edit))
    assert counts == expected


def test_comment_only_edits_rerun_nothing(tiny_run, edited_model_yaml):
    original, edit = edited_model_yaml
    text = (tiny_run / "config" / "test.yaml").read_text()
    (tiny_run / "config" / "commented.yaml").write_text("# a comment\n" + text.replace("\n", "  # why\n", 3))
    edit("# a comment on top\n" + original + "\n# and below\n")
    counts, out = dry_run(tiny_run, "--configfile", "config/commented.yaml")
    assert counts == {} and "Nothing to be done" in out


def test_model_yaml_edits_rerun_the_stages_that_read_them(tiny_run, edited_model_yaml):
    original, edit = edited_model_yaml
    edit(original + "evaluation:\n  knn_k: 7\n")
    counts, _ = dry_run(tiny_run, "--configfile", "config/test.yaml")
    assert counts == {"evaluate": 3, "verdict": 1, "report": 1, "all": 1}
    edit(original.replace("mask_fraction: 0.15", "mask_fraction: 0.2"))
    counts, _ = dry_run(tiny_run, "--configfile", "config/test.yaml")
    assert counts == {"train": 2, "sample": 2, "evaluate": 2, "verdict": 1, "report": 1, "all": 1}


def test_deleted_samples_file_is_rebuilt_when_named(tiny_run, tmp_path):
    """A missing intermediate whose consumers are up to date is not rebuilt by a plain run (Snakemake's
    rule); naming it as a target rebuilds it, and the next plain run reruns what read it (docs/workflow.md)."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_run, repo, symlinks=True)
    samples = "results/synthetic/linear/seed0/samples.parquet"
    (repo / samples).unlink()
    counts, out = dry_run(repo, "--configfile", "config/test.yaml")
    assert counts == {} and "Nothing to be done" in out
    counts, _ = dry_run(repo, "--configfile", "config/test.yaml", "--", samples)  # `--`: not a config file
    assert counts == {"sample": 1}


# --------------------------------------------------------------------------------------------------------
# The small conda environments: their stages run with only the packages listed

# conda package -> module, for the optional heavy packages of the project
HEAVY = {"pytorch": "torch", "scikit-learn": "sklearn", "scanpy": "scanpy", "anndata": "anndata", "h5py": "h5py",
         "matplotlib": "matplotlib", "jinja2": "jinja2", "psutil": "psutil"}


def run_without(env_file: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m alphastomics ARGV` with every heavy package that env_file does not list made unimportable."""
    listed = {re.split(r"[<>=\s]", d)[0] for d in yaml.safe_load(env_file.read_text())["dependencies"]}
    blocked = sorted(m for pkg, m in HEAVY.items() if pkg not in listed)
    code = ("import importlib.abc, sys\n"
            "class Blocked(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            f"        if name.split('.')[0] in {blocked!r}: raise ImportError('not in the env: ' + name)\n"
            "sys.meta_path.insert(0, Blocked())\n"
            "from alphastomics.__main__ import main\n"
            f"sys.exit(main({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_report_and_data_stages_run_in_their_small_environments(tiny_run, tmp_path):
    runs = [str(p.relative_to(tiny_run)) for p in sorted((tiny_run / "results/synthetic").glob("*/seed0"))]
    verdict = run_without(REPO / "workflow/envs/report.yaml",
                          ["verdict", "--config", "config/model.yaml", "--runs", *runs, "--out",
                           str(tmp_path / "verdict.json")], tiny_run)
    assert verdict.returncode == 0, verdict.stderr[-3000:]
    report = run_without(REPO / "workflow/envs/report.yaml",
                         ["report", "--config", "config/model.yaml", "--verdict", str(tmp_path / "verdict.json"),
                          "--runs", *runs, "--out", str(tmp_path / "report.html")], tiny_run)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 0
    data_env = REPO / "workflow/envs/data.yaml"
    sets = ["--set", "dataset.source=synthetic", "--set", "dataset.synthetic.num_sections=3"]
    fetch = run_without(data_env, ["fetch-data", "--out", str(tmp_path / "raw"), *sets], tiny_run)
    assert fetch.returncode == 0, fetch.stderr[-3000:]
    prep = run_without(data_env, ["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "proc"),
                                  *sets], tiny_run)
    assert prep.returncode == 0, prep.stderr[-3000:]
    # and the environment that PyTorch stages use does list PyTorch: the check above can fail
    assert run_without(data_env, ["train", "--data_dir", str(tmp_path / "proc"), "--out", str(tmp_path / "t")],
                       tiny_run).returncode != 0
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    assert '"../envs/report.yaml"' in rules and '"../envs/data.yaml"' in rules


# --------------------------------------------------------------------------------------------------------
# Forced reruns retrain; a preempted job resumes


@pytest.fixture
def forced(tiny_run, tmp_path_factory):
    """A copy of the tiny run whose checkpoints/latest.pt are finished but with zeroed weights: a job that
    resumed would write zeros as final.pt; one that retrains writes the tiny run's weights again."""
    repo = tmp_path_factory.mktemp("forced") / "repo"
    shutil.copytree(tiny_run, repo, symlinks=True)
    for variant in ("linear", "gated_headwise"):
        latest = repo / f"results/synthetic/{variant}/seed0/train/checkpoints/latest.pt"
        ckpt = torch.load(latest, weights_only=False)
        for key in ("model", "ema"):
            ckpt[key] = {n: torch.zeros_like(v) for n, v in ckpt[key].items()}
        torch.save(ckpt, latest)
    return repo


@pytest.mark.parametrize(
    "args, retrained",
    [
        (["-R", "train", "--until", "train"], ["linear", "gated_headwise"]),
        (["--force", "results/synthetic/gated_headwise/seed0/train/final.pt"], ["gated_headwise"]),
    ],
    ids=["R", "force"],
)
def test_forced_rerun_retrains_from_step_0(forced, tiny_run, args, retrained):
    snakemake(forced, "--cores", "2", "--configfile", "config/test.yaml", *args)
    for variant in retrained:
        run = f"results/synthetic/{variant}/seed0/train"
        log = (forced / f"results/logs/train/synthetic/{variant}/seed0.log").read_text()
        assert "training again from step 0" in log and "starting at step 0" in log and "resuming" not in log
        final = torch.load(forced / run / "final.pt", weights_only=False)
        assert any(v.abs().sum() > 0 for v in final["model"].values())  # not the zeroed checkpoint
        assert same_weights(forced / run / "final.pt", tiny_run / run / "final.pt")  # trained again


# --------------------------------------------------------------------------------------------------------
# The slurm profile end to end runs on a real SLURM cluster: tests/test_slurm.py
