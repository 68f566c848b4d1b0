"""The Snakemake workflow: dry runs count the grid (also under --profile slurm), a tiny local run, reruns,
failures. The tiny run on a real SLURM cluster is tests/test_slurm.py.

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
    # --cores 16: a dry run caps threads at --cores, a SLURM job at the CPUs it got
    counts, out = dry_run(repo, "--profile", "slurm", "--cores", "16")
    assert re.search(r"Using profiles? slurm", out)
    assert counts["train"] == 50 and counts["sample"] == 50
    # The GPU rules ask for the GPU partition and one GPU; CPU rules keep the CPU partition.
    train = out[out.index("rule train:") :].split("\n\n")[0]
    assert "slurm_partition=gpu" in train and "gpu=1" in train and "cpus_per_gpu=8" in train
    assert "threads: 8" in train and "nodes=1" in train  # the CPUs SLURM gives it are the ones it uses
    preprocess = out[out.index("rule preprocess:") :].split("\n\n")[0]
    assert "slurm_partition=cpu" in preprocess and "gpu=" not in preprocess
    # (that fetch_data and report are localrules, never submitted, shows in tests/test_slurm.py)


def test_multi_gpu_variant_runs_torchrun_and_asks_for_its_gpus(tmp_path):
    repo = make_copy(tmp_path)
    def edit(c):
        c["variants"]["gated_headwise"].update(gpus=2)
        c["resources"]["train"]["cpus_per_gpu"] = 8

    config = write_config(repo, "ddp.yaml", edit)
    _, out = dry_run(repo, "-p", "--configfile", config, "--until", "train")
    blocks = {b.split("output: ")[1].split("/train/")[0]: b for b in out.split("\n\n") if "rule train:" in b}
    ddp, single = blocks["results/synthetic/gated_headwise/seed0"], blocks["results/synthetic/linear/seed0"]
    assert "torchrun --standalone --nproc_per_node 2 -m alphastomics train" in ddp
    assert re.search(r"\bgpu=2\b", ddp) and "mem_mb=4000" in ddp  # 2000 MB per GPU x 2 GPUs x attempt 1
    assert "python -m alphastomics train" in single and re.search(r"\bgpu=1\b", single)
    # Locally Snakemake caps threads at --cores (2); train is told how many it got.
    assert "threads: 2" in ddp and "--threads 2" in ddp
    # Under SLURM: cpus_per_gpu x gpus threads, one node (torchrun's DDP runs inside one node).
    _, out = dry_run(repo, "-p", "--profile", "slurm", "--cores", "32", "--configfile", config, "--until", "train")
    blocks = {b.split("output: ")[1].split("/train/")[0]: b for b in out.split("\n\n") if "rule train:" in b}
    ddp, single = blocks["results/synthetic/gated_headwise/seed0"], blocks["results/synthetic/linear/seed0"]
    assert "threads: 16" in ddp and "--threads 16" in ddp and "nodes=1" in ddp
    assert "threads: 8" in single and "--threads 8" in single
    # the time limit reaches train only inside a SLURM job (SLURM_JOB_ID set)
    assert "${SLURM_JOB_ID:+--time-limit-min 10}" in ddp


def test_lab_template_runs_the_default_grid_on_one_data_set(tmp_path):
    """config/lab.yaml is config/config.yaml's grid (variants, seeds, peers, budget, family) on the lab's file;
    config/lab_h5ad.yaml, the smoke test, is not a template."""
    repo = make_copy(tmp_path)
    (repo / "data").mkdir()
    (repo / "data/lab.h5ad").touch()  # a dry run only asks that the input exists
    lab = yaml.safe_load((REPO / "config/lab.yaml").read_text())
    default = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key in ("model_config", "variants", "seeds", "baselines"):
        assert lab[key] == default[key], key
    assert "overrides" not in lab and lab["datasets"]["lab"].get("overrides") is None  # the default budget
    assert lab.get("verdict") == default.get("verdict")  # the declared family
    counts, _ = dry_run(repo, "--configfile", "config/lab.yaml")
    assert counts["train"] == len(default["variants"]) * len(default["seeds"]) == 25
    assert "SMOKE TEST" in (REPO / "config/lab_h5ad.yaml").read_text().splitlines()[0]


def test_report_declares_what_it_reads_and_snapshots_the_configuration_as_run(tmp_path):
    """The report's inputs are the files it reads (so it runs after them and reruns when they change), and
    its configuration snapshot is the configuration this run resolved: --config model_config=... included."""
    repo = make_copy(tmp_path)
    _, out = dry_run(repo, "-p", "--configfile", "config/test.yaml", "--config",
                     "model_config=config/model_cluster.yaml")
    block = out[out.index("rule report:"):].split("\n\n")[0]
    inputs = block.split("input: ")[1].split("\n")[0].split(", ")
    runs = ["results/synthetic/linear/seed0", "results/synthetic/gated_headwise/seed0",
            "results/synthetic/peer_knn/seed0"]
    expected = {"results/data/synthetic/processed"} | {f"{r}/{f}" for r in runs for f in (
        "eval/metrics.json", "eval/sections.csv", "samples.parquet")} | {
        f"{r}/train/train_summary.json" for r in runs[:2]}
    assert set(inputs) == expected
    assert "--config config/model_cluster.yaml" in block and "--config-snapshot results/config_as_run.yaml" in block
    snapshot = yaml.safe_load(block.split("printf '%s' '")[1].split("' > results/config_as_run.yaml")[0])
    assert snapshot["model_config"] == "config/model_cluster.yaml"  # what ran, not what the file says
    assert snapshot["seeds"] == [0] and snapshot["resources"]["cpu"]["threads"] == 1  # defaults filled in


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
        (lambda c: c["variants"]["linear"].update(overrides={"TransformerLayer_setting": {"gate_type": "rowwise"}}),
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
        c["variants"]["gated_headwise"].setdefault("overrides", {})["training"] = {"learning_rate": 2.0e-3}

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
         {"evaluate": 3, "report": 1, "all": 1}),
        # a sampling-only setting: sample and what follows, no training
        (lambda c: c["overrides"]["diffusion"].update(sampling_steps=5),
         {"sample": 2, "evaluate": 2, "report": 1, "all": 1}),
        # a peer setting: the baseline and what follows
        (lambda c: c["overrides"].update(peers={"knn_k": 3}), {"baseline": 1, "evaluate": 1, "report": 1, "all": 1}),
        # a training setting of every run: train again (the check that the trigger works at all)
        (lambda c: c["overrides"]["training"].update(learning_rate=1.0e-3),
         {"train": 2, "sample": 2, "evaluate": 2, "report": 1, "all": 1}),
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
    assert counts == {"evaluate": 3, "report": 1, "all": 1}
    edit(original.replace("mask_fraction: 0.15", "mask_fraction: 0.2"))
    counts, _ = dry_run(tiny_run, "--configfile", "config/test.yaml")
    assert counts == {"train": 2, "sample": 2, "evaluate": 2, "report": 1, "all": 1}


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
# The learning gate end to end: a tissue with no spatial signal is not interpreted, bdtnp is

# The smallest budget at which the tiny model learns bdtnp with a margin: at 150 steps the worse end of the
# interval over 3 seeds of distance Spearman sits at 0.5-0.7 of the way from random to perfect (the gate
# asks for 0.1); at 100 steps one seed of 3 reached 0.32 and the worse end fell near the margin; at 4-50
# steps nothing is learned (docs/data.md, "When nothing was learned"). The tissue without signal gets the
# same budget, so the data alone make the difference.
CONTROL_TRAINING = {"max_steps": 150, "val_every": 75, "checkpoint_every": 75, "log_every": 25}


def write_no_signal_h5ad(path: Path) -> None:
    """4 sections x 100 cells x 16 genes: Poisson counts with per-gene rates, positions uniform and drawn
    independently of them: expression says nothing about where a cell is. No cell-type column."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n_sections, n_cells, n_genes = 4, 100, 16
    counts = rng.poisson(rng.gamma(2.0, 2.0, n_genes), (n_sections * n_cells, n_genes)).astype(np.float32)
    obs = pd.DataFrame({"section": np.repeat([f"s{i}" for i in range(n_sections)], n_cells)},
                       index=[f"c{i}" for i in range(n_sections * n_cells)])
    a = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    a.obsm["spatial"] = rng.uniform(0, 500, (n_sections * n_cells, 2))
    a.write_h5ad(path)


def test_negative_control_is_not_interpreted_and_bdtnp_is(tmp_path, bdtnp_dir):
    from alphastomics import checks
    from alphastomics.report import markdown_summary

    repo = make_copy(tmp_path)
    write_no_signal_h5ad(repo / "no_signal.h5ad")

    def edit(c):
        c["datasets"] = {
            "bdtnp": {"dataset": {"source": "bdtnp"}, "local_copy": str(bdtnp_dir)},
            "no_signal": {"dataset": {"source": "h5ad", "path": "no_signal.h5ad"}},
        }
        c["seeds"] = [0, 1, 2]  # an interval over seeds: with 2, t(0.975, 1) = 12.7 makes it too wide to clear
        c["overrides"]["training"].update(CONTROL_TRAINING)

    config = write_config(repo, "control.yaml", edit)
    # one thread per training and sampling job, two side by side (as `make run`): on 2 shared cores, two torch
    # threads per job spin against each other (150 steps: 24 s against 3 s, measured on a loaded machine)
    snakemake(repo, "--profile", "workflow/profiles/default", "--cores", "2", "--set-threads", "train=1",
              "sample=1", "--configfile", config)
    verdict = json.loads((repo / "results/verdict.json").read_text())
    gates = {d["dataset"]: d["learning_gate"] for d in verdict["datasets"]}
    records = {d["dataset"]: d["records"] for d in verdict["datasets"]}

    def skills(gate, key):
        return [r[key] for e in gate["metrics"] for r in e["variants"]]

    assert gates["no_signal"]["outcome"] == "not learned"
    assert gates["no_signal"]["message"] == checks.NOT_LEARNED  # the kNN peer is at the random level too
    assert max(skills(gates["no_signal"], "skill")) < checks.MIN_SKILL / 2  # even the means are far from it
    assert {r["decision"] for r in records["no_signal"]} == {checks.NOT_INTERPRETED}
    assert gates["bdtnp"]["outcome"] == "learned"
    assert max(skills(gates["bdtnp"], "skill_worse_end")) > 3 * checks.MIN_SKILL  # cleared with margin
    assert checks.NOT_INTERPRETED not in {r["decision"] for r in records["bdtnp"]}

    md = markdown_summary(repo / "results")
    assert f"**no_signal: {checks.NOT_LEARNED}.**" in md and "**bdtnp** (3 seeds" in md
    page = (repo / "results/report.html").read_text()
    assert page.index("The models did not learn this tissue") < page.index('id="expectations"')
    # a lab's file without the optional cell-type column: noted in the log and on the page
    log = (repo / "results/logs/preprocess/no_signal.log").read_text()
    assert "no cell-type column 'cell_type' (dataset.cell_type_key)" in log
    assert re.search(r"preprocess: train: s\d \(100 cells\), s\d \(100 cells\); val: s\d \(100 cells\); test:", log)
    assert "Data note (preprocess, manifest.json): no cell-type column" in page.replace("&#39;", "'")


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
    report = run_without(REPO / "workflow/envs/report.yaml",
                         ["report", "--config", "config/model.yaml", "--runs", *runs, "--out",
                          str(tmp_path / "report.html")], tiny_run)
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


def test_set_up_files_say_what_the_workflow_needs():
    env = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    assert "snakemake-executor-plugin-slurm>=2,<3" in env  # the profile uses 2.x options
    assert any(re.fullmatch(r"cuda-version=\d+\.\d+", d) for d in env if isinstance(d, str))  # CONDA_OVERRIDE_CUDA
    # the peers of config.yaml's baselines, at the versions the pyproject extras pin
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    assert "tangram-sc==1.0.4" in pip and "novosparc==0.4.4" in pip
    assert "CONDA_OVERRIDE_CUDA" in (REPO / "environment.yml").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"snakemake-executor-plugin-slurm>=2,<3"' in pyproject and 'license = "MIT"' in pyproject
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert catalog["software-stack-deployment"]["conda"] is True and catalog["report"] is True
    for profile in ("default", "slurm"):  # CI uses these: conda never turned on there
        text = (REPO / "workflow/profiles" / profile / "config.yaml").read_text()
        assert "conda" not in yaml.safe_load(text).get("software-deployment-method", "")
        assert "use-conda" not in yaml.safe_load(text)
    # The workflow profile's keys win over --profile slurm's: it must not set keep-going, or one failed job
    # would stop a whole cluster campaign; the slurm profile keeps going.
    profiles = {p: yaml.safe_load((REPO / "workflow/profiles" / p / "config.yaml").read_text())
                for p in ("default", "slurm")}
    assert "keep-going" not in profiles["default"] and profiles["slurm"]["keep-going"] is True


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
# The slurm profile end to end runs on a real SLURM cluster: tests/test_slurm.py


def same_weights(a: Path, b: Path) -> bool:
    ca, cb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    return all(torch.equal(ca[k][n], cb[k][n]) for k in ("model", "ema") for n in ca[k])


def test_changed_source_file_reruns_fetch_and_preprocess_untouched_reruns_nothing(tmp_path):
    import anndata as ad
    import numpy as np
    import pandas as pd

    repo = make_copy(tmp_path)
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        rng.poisson(3.0, (60, 8)).astype(np.float32),
        obs=pd.DataFrame({"section": np.repeat(["a", "b", "c"], 20)}, index=[f"c{i}" for i in range(60)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(8)]),
    )
    a.obsm["spatial"] = rng.uniform(0, 100, (60, 2))
    src = repo / "mine.h5ad"
    a.write_h5ad(src)

    def edit(cfg):
        cfg["datasets"] = {"mine": {"dataset": {"source": "h5ad", "path": "mine.h5ad"}}}

    cfg = write_config(repo, "mine.yaml", edit)
    target = "results/data/mine/processed"
    snakemake(repo, target, "--cores", "1", "--configfile", cfg)
    assert dry_run(repo, target, "--configfile", cfg)[0] == {}
    a.X[0, 0] += 1.0
    a.write_h5ad(src)  # a new export of the file (Snakemake skips inputs of unchanged checksum under 1 MB)
    later = src.stat().st_mtime + 60
    os.utime(src, (later, later))
    assert dry_run(repo, target, "--configfile", cfg)[0] == {"fetch_data": 1, "preprocess": 1}
    counts, _ = dry_run(repo, "--configfile", cfg)  # and everything downstream of the data set
    assert counts["fetch_data"] == 1 and counts["train"] >= 1 and counts["report"] == 1
