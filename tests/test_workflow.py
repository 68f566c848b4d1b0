"""The Snakemake workflow: dry runs count the grid, a tiny run locally and on a fake SLURM, reruns, failures.

Every run happens in a temporary copy of the repository's workflow/ and config/ (never in its results/),
with ../shared linked beside it as in CI. The tiny configuration is config/test.yaml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
BIN = Path(sys.executable).parent


def make_copy(root: Path) -> Path:
    """A checkout-like copy: workflow/, config/, environment.yml, the ./slurm profile link, ../shared."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    for name in ("workflow", "config"):
        shutil.copytree(REPO / name, repo / name, symlinks=True)
    shutil.copy(REPO / "environment.yml", repo)
    (repo / "slurm").symlink_to("workflow/profiles/slurm")
    if SHARED.exists():
        (root / "shared").symlink_to(SHARED)
    return repo


def snakemake(repo: Path, *args: str, env: dict | None = None, check: bool = True):
    proc = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})},
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}; {} when nothing is to be done."""
    match = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n(?:\n|$)", output, re.S)
    if not match:
        return {}
    rows = (line.split() for line in match.group(1).splitlines())
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[0] != "total"}


def dry_run(repo: Path, *args: str) -> tuple[dict[str, int], str]:
    proc = snakemake(repo, "-n", "--cores", "2", *args)
    out = proc.stdout + proc.stderr
    return job_counts(out), out


def write_config(repo: Path, name: str, edit, sort_keys: bool = False) -> str:
    cfg = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    edit(cfg)
    (repo / "config" / name).write_text(yaml.safe_dump(cfg, sort_keys=sort_keys))
    return f"config/{name}"


# --------------------------------------------------------------------------------------------------------
# Dry runs of the default grid


def test_default_dry_run_lists_datasets_x_variants_x_seeds(tmp_path):
    repo = make_copy(tmp_path)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    runs = len(cfg["datasets"]) * len(cfg["variants"]) * len(cfg.get("seeds", [0, 1, 2]))
    from alphastomics.peers import runnable

    installed, _ = runnable(cfg["baselines"])  # a peer whose package is missing is skipped, with a warning
    peers = len(cfg["datasets"]) * len(installed) * len(cfg.get("baseline_seeds", [0]))
    counts, _ = dry_run(repo)
    assert runs == 2 * 5 * 5  # the default grid: bdtnp + synthetic, four ablation rows + softmax, 5 seeds
    assert counts["train"] == counts["sample"] == runs
    assert counts["baseline"] == peers and "knn" in installed
    assert counts["evaluate"] == runs + peers
    assert counts["fetch_data"] == counts["preprocess"] == 2
    assert counts["report"] == 1


def test_slurm_profile_dry_run_from_repository_root(tmp_path):
    repo = make_copy(tmp_path)
    counts, out = dry_run(repo, "--profile", "slurm")
    assert re.search(r"Using profiles? slurm", out)
    assert counts["train"] == 50 and counts["sample"] == 50
    # The GPU rules ask for the GPU partition and one GPU; CPU rules keep the CPU partition.
    train = out[out.index("rule train:") :].split("\n\n")[0]
    assert "slurm_partition=gpu" in train and "gpu=1" in train and "cpus_per_gpu=8" in train
    fetch = out[out.index("rule fetch_data:") :].split("\n\n")[0]
    assert "slurm_partition=cpu" in fetch and "gpu=" not in fetch


def test_multi_gpu_variant_runs_torchrun_and_asks_for_its_gpus(tmp_path):
    repo = make_copy(tmp_path)
    config = write_config(repo, "ddp.yaml", lambda c: c["variants"]["gated_headwise"].update(gpus=2))
    _, out = dry_run(repo, "-p", "--configfile", config, "--until", "train")
    blocks = {b.split("output: ")[1].split("/train/")[0]: b for b in out.split("\n\n") if "rule train:" in b}
    ddp, single = blocks["results/synthetic/gated_headwise/seed0"], blocks["results/synthetic/linear/seed0"]
    assert "torchrun --standalone --nproc_per_node 2 -m alphastomics train" in ddp
    assert re.search(r"\bgpu=2\b", ddp) and "mem_mb=4000" in ddp  # 2000 MB per GPU x 2 GPUs x attempt 1
    assert "python -m alphastomics train" in single and re.search(r"\bgpu=1\b", single)


# --------------------------------------------------------------------------------------------------------
# Config validation: fails at parse time, before any job runs


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(baselines=["magic"]), "'magic' is not one of"),
        (lambda c: c.update(seeds=[-1]), "-1 is less than the minimum of 0"),
        (lambda c: c["variants"].update(peer_x={}), "peer_x"),
        (lambda c: c.update(gpu=2), "Additional properties are not allowed ('gpu' was unexpected)"),
        # a package key inside overrides is checked by the package's own config loader
        (lambda c: c["variants"]["linear"]["overrides"]["TransformerLayer_setting"].update(gate_type="rowwise"),
         "'TransformerLayer_setting.gate_type' is 'rowwise'; use one of"),
    ],
)
def test_config_violation_fails_before_any_job(tmp_path, edit, message):
    repo = make_copy(tmp_path)
    config = write_config(repo, "bad.yaml", edit)
    proc = snakemake(repo, "--cores", "2", "--configfile", config, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (repo / "results").exists()


# --------------------------------------------------------------------------------------------------------
# Code quality of the workflow itself


def test_snakemake_lint_passes(tmp_path):
    repo = make_copy(tmp_path)
    proc = snakemake(repo, "--lint", "--cores", "1")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_passes():
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", "workflow"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


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
    assert counts == {"sample": 2, "evaluate": 2, "report": 1, "all": 1}


def test_changing_one_variant_reruns_only_that_variant(tiny_run):
    def edit(c):
        c["variants"]["gated_headwise"]["overrides"]["training"] = {"learning_rate": 2.0e-3}

    config = write_config(tiny_run, "edited.yaml", edit)
    counts, out = dry_run(tiny_run, "--configfile", config)
    assert counts == {"train": 1, "sample": 1, "evaluate": 1, "report": 1, "all": 1}
    jobs = [b for b in out.split("\n\n") if re.search(r"^rule (train|sample|evaluate):", b.strip(), re.M)]
    assert jobs and all("gated_headwise" in b and "/linear/" not in b for b in jobs)


def test_changed_variant_retrains_from_scratch(tiny_run, tmp_path):
    """The rerun train job finds the old config's checkpoints, discards them and trains afresh."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_run, repo, symlinks=True)

    def edit(c):
        c["variants"]["gated_headwise"]["overrides"]["training"] = {"learning_rate": 2.0e-3}

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


# --------------------------------------------------------------------------------------------------------
# A failing job: clear failure, no corrupt output, rerun after the fix completes


def test_failing_job_names_its_log_and_rerun_after_fix_completes(tmp_path):
    repo = make_copy(tmp_path)
    bdtnp = {"dataset": {"source": "bdtnp", "num_slabs": 4}, "local_copy": str(tmp_path / "missing")}
    config = write_config(repo, "fail.yaml", lambda c: c.update(datasets={"bdtnp": bdtnp}))
    proc = snakemake(repo, "--profile", "workflow/profiles/default", "--cores", "1", "--configfile", config,
                     "--until", "preprocess", check=False)
    assert proc.returncode != 0
    assert "results/logs/fetch_data/bdtnp.log" in proc.stdout + proc.stderr
    leftovers = [p for p in (repo / "results" / "data").rglob("*") if p.is_file()]
    assert leftovers == []  # neither the failed job's output nor a half-written temporary survives

    (tmp_path / "missing").mkdir()  # the fix: put the data where the config says
    for name in ("dge.txt", "geometry.txt"):
        shutil.copy(SHARED / "data" / "bdtnp" / name, tmp_path / "missing" / name)
    snakemake(repo, "--profile", "workflow/profiles/default", "--cores", "1", "--configfile", config,
              "--until", "preprocess")
    assert (repo / "results/data/bdtnp/processed/manifest.json").exists()


# --------------------------------------------------------------------------------------------------------
# The slurm profile end to end against fake SLURM commands


def test_slurm_profile_runs_tiny_workflow_on_fake_slurm(tmp_path):
    repo = make_copy(tmp_path)
    state = tmp_path / "slurm_state"
    env = {"PATH": f"{FAKE_SLURM}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}
    snakemake(repo, "--profile", "slurm", "--configfile", "config/test.yaml",
              "--slurm-init-seconds-before-status-checks", "1", env=env)
    assert (repo / "results/report.html").exists()

    calls = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    by_rule: dict[str, list[list[str]]] = {}
    for args in calls:
        rule = re.match(r"rule_([a-z_]+?)(_wildcards_.*)?$", args[args.index("--comment") + 1]).group(1)
        by_rule.setdefault(rule, []).append(args)
    assert {r: len(c) for r, c in by_rule.items()} == {
        "fetch_data": 1, "preprocess": 1, "train": 2, "baseline": 1, "sample": 2, "evaluate": 3, "report": 1}
    for args in by_rule["train"] + by_rule["sample"]:
        # config/test.yaml: runtime 10 min, 2000 MB per GPU; profile: GPU partition, placeholder account
        flags = " ".join(args[:-1])
        assert "-p gpu" in flags and "-A your_account" in flags
        assert "--gpus=1" in args and "--cpus-per-gpu=8" in args
        assert "-t 10" in flags and "--mem 2000" in flags
        assert "--gres" not in flags and "--cpus-per-task" not in flags
    for args in by_rule["train"]:  # a checkpoint before the time limit, then the retry resumes
        assert "--signal=USR1@120" in args
    for args in by_rule["fetch_data"] + by_rule["evaluate"] + by_rule["report"]:
        flags = " ".join(args[:-1])
        assert "-p cpu" in flags and "--mem 1000" in flags and "--cpus-per-task=1" in args
        assert not any(a.startswith("--gpus") for a in args)
