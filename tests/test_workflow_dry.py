"""The Snakemake workflow without the tiny run: dry runs count the grid and the resources (also under
--profile slurm), config errors stop it before any job, lint and format, the set-up files, and small runs of
the data stages (a failing job, a changed source file). The tiny run on a real SLURM cluster is
tests/test_slurm.py.

Every run happens in a temporary copy of the repository's workflow/ and config/ (never in its results/),
with ../shared linked beside it as in CI (tests/workflow_helpers.py). The tiny configuration is
config/test.yaml.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_helpers import BIN, REPO, SHARED, dry_run, job_counts, make_copy, snakemake, write_config

pytestmark = pytest.mark.workflow


# --------------------------------------------------------------------------------------------------------
# Dry runs of the default grid


def make_dry_run(repo: Path, target: str) -> tuple[dict[str, int], str]:
    """The Makefile's snakemake command of ``target``, as make would run it (its venv: this one), dry."""
    shutil.copy(REPO / "Makefile", repo)
    printed = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", f"BIN={BIN}", target],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.replace("\\\n", " ")
    commands = [line for line in printed.splitlines() if "snakemake" in line]
    assert len(commands) == 1, printed
    proc = subprocess.run(
        [*shlex.split(commands[0]), "-n"],
        cwd=repo, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make {target}: {commands[0]}\n{out[-3000:]}"
    return job_counts(out), out


def test_default_dry_run_lists_datasets_x_variants_x_seeds(tmp_path):
    """`make run`'s own command plans the default grid."""
    repo = make_copy(tmp_path)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    runs = len(cfg["variants"]) * sum(len(d.get("seeds") or cfg["seeds"]) for d in cfg["datasets"].values())
    from alphastomics.evaluation.peers import runnable

    installed, _ = runnable(cfg["baselines"])  # a peer whose package is missing is skipped, with a warning
    peers = len(cfg["datasets"]) * len(installed) * len(cfg.get("baseline_seeds", [0]))
    counts, out = make_dry_run(repo, "run")
    # the default grid: four ablation rows + softmax on bdtnp (6 seeds) and synthetic (5 seeds)
    assert runs == 5 * (6 + 5)
    assert counts["train"] == counts["sample"] == runs
    assert "results/bdtnp/softmax/seed5/train/final.pt" in out
    assert "results/synthetic/softmax/seed5" not in out and "results/bdtnp/softmax/seed6" not in out
    assert counts["baseline"] == peers and "knn" in installed
    assert counts["evaluate"] == runs + peers
    assert counts["fetch_data"] == counts["preprocess"] == 2
    assert counts["verdict"] == counts["report"] == 1


def test_make_powered_and_learning_curve_plan_their_designs(tmp_path):
    """`make powered` (variants x seeds x folds of config/powered.yaml, the kNN peer per fold) and `make
    learning-curve` (2 data sets x 3 variants x 2 seeds) parse as make runs them and plan their jobs."""
    repo = make_copy(tmp_path)
    powered = yaml.safe_load((REPO / "config" / "powered.yaml").read_text())
    folds = powered["datasets"]["bdtnp"]["folds"]
    runs = len(powered["variants"]) * len(powered["seeds"]) * folds
    counts, _ = make_dry_run(repo, "powered")
    assert (counts["train"], counts["evaluate"]) == (runs, runs + folds)
    counts, _ = make_dry_run(repo, "learning-curve")
    assert counts["study_train"] == 2 * 3 * 2


def test_make_claims_plans_each_task_with_its_variants(tmp_path):
    """`make claims` runs make stability's sweep, then config/claims.yaml: every variant on the position
    task, three on each expression and joint task (datasets.NAME.variants), each with its diffusion.mode,
    and a report that reads the sweep's file (a param: not written yet here)."""
    repo = make_copy(tmp_path)
    shutil.copy(REPO / "Makefile", repo)
    printed = subprocess.run(["make", "-n", "-o", ".venv/.installed", f"BIN={BIN}", "claims"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    commands = [line for line in printed.splitlines() if "snakemake" in line]
    assert [("stability.yaml" in c, "claims.yaml" in c) for c in commands] == [(True, False), (False, True)]
    counts, out = dry_run(repo, "--configfile", "config/claims.yaml")
    assert counts["train"] == counts["evaluate"] == 5 * 5 + 3 * 3 * 5
    assert "results/bdtnp_position/gated_elementwise/seed4/train/final.pt" in out
    assert "results/bdtnp_joint/gated_elementwise" not in out and "results/starmap_expression/softmax/seed4" in out
    assert "diffusion.mode=pos_to_expr" in out and "diffusion.mode=joint" in out
    assert "--stability results/stability/stability.json" in out


# The site settings of the slurm profile: environment variables read by workflow/profiles/slurm/config.yaml
# (a YTE template). SBATCH_ACCOUNT is its fallback for the account. "" reads as unset.
SITE_VARIABLES = ("ALPHASTOMICS_SLURM_ACCOUNT", "SBATCH_ACCOUNT", "ALPHASTOMICS_CPU_PARTITION",
                  "ALPHASTOMICS_GPU_PARTITION")
NO_SITE = dict.fromkeys(SITE_VARIABLES, "")
A_SITE = {**NO_SITE, "ALPHASTOMICS_SLURM_ACCOUNT": "lab42", "ALPHASTOMICS_CPU_PARTITION": "short",
          "ALPHASTOMICS_GPU_PARTITION": "a100"}


def site_dry_run(repo: Path, site: dict[str, str], *args: str) -> tuple[dict[str, int], str]:
    proc = snakemake(repo, "-n", "-p", "--profile", "slurm", *args, env=site)
    return job_counts(proc.stdout + proc.stderr), proc.stdout + proc.stderr


def test_slurm_profile_dry_run_from_repository_root(tmp_path):
    repo = make_copy(tmp_path)
    # --cores 16: a dry run caps threads at --cores, a SLURM job at the CPUs it got
    counts, out = site_dry_run(repo, A_SITE, "--cores", "16")
    assert re.search(r"Using profiles? slurm", out)
    assert counts["train"] == counts["sample"] == 5 * (6 + 5)  # 5 variants x (bdtnp 6 + synthetic 5 seeds)
    # The GPU rules ask for the GPU partition of the environment and one GPU; CPU rules for the CPU one.
    train = out[out.index("rule train:") :].split("\n\n")[0]
    assert "slurm_partition=a100" in train and "gpu=1" in train and "cpus_per_gpu=8" in train
    assert "slurm_account=lab42" in train
    assert "threads: 8" in train and "nodes=1" in train  # the CPUs SLURM gives it are the ones it uses
    preprocess = out[out.index("rule preprocess:") :].split("\n\n")[0]
    assert "slurm_partition=short" in preprocess and "gpu=" not in preprocess
    assert "slurm_account=lab42" in preprocess
    # Evaluate is sized on its own (resources.evaluate) and holds its numeric libraries to those CPUs.
    wanted = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["resources"]["evaluate"]
    evaluate = out[out.index("rule evaluate:") :].split("\n\n")[0]
    assert f"--threads {wanted['threads']}" in evaluate  # (Snakemake prints "threads:" only above 1)
    assert f"mem_mb={wanted['mem_mb']}" in evaluate and f"runtime={wanted['runtime']}" in evaluate


    # (that fetch_data and report are localrules, never submitted, shows in tests/test_slurm.py)


def test_slurm_profile_names_no_site_and_takes_it_from_the_environment(tmp_path, monkeypatch):
    """A clean checkout's slurm profile holds no account or partition (nothing a lab must edit in a tracked
    file): without the variables a dry run asks for none (SLURM's defaults: the plugin's guess or the
    user's default account, the default partition); with the GPU partition alone only the GPU rules get one
    (CPU rules stay on the cluster's default); every rule asking for a GPU is in the profile's GPU list."""
    text = (REPO / "workflow/profiles/slurm/config.yaml").read_text()
    assert not re.search(r"your_account|PLACEHOLDER|slurm_(account|partition): *['\"]?\w", text)
    repo = make_copy(tmp_path)
    _, out = site_dry_run(repo, NO_SITE, "--cores", "16", "--configfile", "config/test.yaml")
    assert "rule train:" in out and "rule preprocess:" in out
    assert "slurm_account" not in out and "slurm_partition" not in out
    _, out = site_dry_run(repo, {**NO_SITE, "ALPHASTOMICS_GPU_PARTITION": "a100"}, "--cores", "16",
                          "--configfile", "config/test.yaml")
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?:\n\n|\Z)", out, re.DOTALL | re.MULTILINE)
    assert {rule for rule, block in blocks if re.search(r"\bgpu=\d", block)} == {"train", "sample"}
    for rule, block in blocks:
        assert ("slurm_partition=a100" in block) == bool(re.search(r"\bgpu=\d", block)), (rule, block)
        assert "slurm_account" not in block
    # The profile as Snakemake reads it (its YTE template filled in): GPU rules = the rules asking for a GPU
    from snakemake.profiles import ProfileConfigFileParser

    for name, value in {**A_SITE, "SBATCH_ACCOUNT": "other"}.items():
        monkeypatch.setenv(name, value)
    with open(REPO / "workflow/profiles/slurm/config.yaml") as fh:
        parsed = ProfileConfigFileParser().parse(fh)
    assert parsed["default-resources"] == ["slurm_account='lab42'", "slurm_partition='short'"]
    on_gpu = {entry.split(":")[0] for entry in parsed["set-resources"] if entry.endswith("='a100'")}
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    gpu_rule = re.compile(r"^rule (\w+):\n(?:    .*\n|\n)*?        gpu=", re.MULTILINE)
    asking = {m.group(1) for m in gpu_rule.finditer(rules)}
    assert on_gpu == asking == {"train", "sample", "reassemble", "study_train", "study_sample"}
    monkeypatch.setenv("ALPHASTOMICS_SLURM_ACCOUNT", "")  # unset: SLURM's own variable is the account
    with open(REPO / "workflow/profiles/slurm/config.yaml") as fh:
        assert "slurm_account='other'" in ProfileConfigFileParser().parse(fh)["default-resources"]


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
    assert "results/verdict.json" in inputs  # the verdict stage decides, the report renders
    inputs.remove("results/verdict.json")
    verdict_block = out[out.index("rule verdict:"):].split("\n\n")[0]
    assert set(verdict_block.split("input: ")[1].split("\n")[0].split(", ")) == set(inputs)
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


def test_every_conda_env_exists_and_the_model_env_is_slim():
    """Every `conda:` of workflow/rules names a file that exists (the baseline's, one per peer method); the
    rules that run a model share workflow/envs/model.yaml, which lists what their stages import and none of
    environment.yml's tools (Snakemake, pytest, formatters, the peers), so that editing those reruns no model
    job under --sdm conda; its PyTorch is the CUDA build of environment.yml."""
    from alphastomics.evaluation.peers import METHODS

    envs = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), re.MULTILINE):
            conda = re.search(r"^    conda:\n(?: *#.*\n)* *\"([^\"]+)\"", body, re.MULTILINE)
            if conda:
                envs[rule] = conda.group(1)
                for method in METHODS if "{method}" in conda.group(1) else [None]:
                    path = smk.parent / conda.group(1).format(method=method)
                    assert path.is_file(), f"{smk.name}: rule {rule}: conda env {path} does not exist"
    model_rules = {"train", "sample", "evaluate", "reassemble", "study_train", "study_sample", "study_evaluate",
                   "study_peer", "learning_curve"}
    assert {rule for rule, env in envs.items() if env == "../envs/model.yaml"} == model_rules
    deps = yaml.safe_load((REPO / "workflow/envs/model.yaml").read_text())["dependencies"]
    assert all(isinstance(d, str) for d in deps)  # conda packages only: no pip section
    names = {re.split(r"[<>=\s]", d)[0] for d in deps}
    assert names >= {"python", "cuda-version", "pytorch-gpu", "numpy", "scipy", "pandas", "pyarrow", "pyyaml",
                     "scikit-learn", "threadpoolctl", "psutil", "anndata", "h5py", "scanpy", "matplotlib"}
    assert not names & {"snakemake", "snakemake-executor-plugin-slurm", "snakefmt", "jsonschema", "pytest",
                        "pytest-timeout", "tangram-sc", "novosparc", "celerypy", "pip", "pooch", "rdata"}
    full = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    assert [d for d in deps if d.startswith(("cuda-version", "python="))] == [
        d for d in full if isinstance(d, str) and d.startswith(("cuda-version", "python="))]


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
