"""Config validation, wildcard constraints and input/param functions shared by every rule.

The config says *what* runs (config/config.yaml, validated against workflow/schemas/config.schema.yaml);
hyperparameters live in the package YAML named by `model_config`. Each stage reads only some settings
(alphastomics.config.STAGE_SETTINGS): its job gets `--config model.yaml` plus `--set section.key=value` for
the overrides of those settings only, and a param `settings` holding their resolved values (model.yaml
merged with the overrides). Snakemake reruns a job when its params change, so a changed setting reruns
exactly the stages that read it (and their descendants), and an edit that changes no value (a comment,
key order) reruns nothing. model.yaml is, for that reason, no file input of any job (its time stamp
would rerun everything).
"""

import json
import os
import sys
import shlex
from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# Stages run with the interpreter that runs Snakemake (e.g. .venv/bin/snakemake without an activated
# venv, as `make run` calls it); an activated conda env of a `conda:` directive still comes first in PATH.
os.environ["PATH"] = (
    os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
)
# The package itself comes from this checkout, here (alphastomics.plan and .variants are plain Python,
# importable wherever Snakemake runs) and in the jobs, also inside the conda envs of `conda:` directives
# (environment.yml and workflow/envs/*.yaml hold its dependencies, not the package).
sys.path.insert(0, str(Path(workflow.basedir).parent))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p
    for p in (str(Path(workflow.basedir).parent), os.environ.get("PYTHONPATH", ""))
    if p
)
from alphastomics import plan

# The run folders come from one layout (alphastomics/layout.py: plain Python).
from alphastomics.layout import PEER_PREFIX, RUN_LAYOUT, is_peer, peer_variant


envvars:
    "PATH",
    "PYTHONPATH",


validate(config, schema="../schemas/config.schema.yaml", set_default=True)

# Data sets with `folds: K` run as K data sets {name}_fold1..K (alphastomics.plan.expand_datasets); their
# raw data are fetched once, under the data set's own name.
DATASET_ENTRIES = plan.expand_datasets(config["datasets"])
DATASETS = list(DATASET_ENTRIES)
SOURCES = list(config["datasets"])
# With `learning_rates` (a sweep, config/stability.yaml) every variant V runs as V_lr{rate}, one variant per
# rate (alphastomics.plan.expand_variants): the rules below see those names only.
try:
    VARIANT_ENTRIES = plan.expand_variants(config)
except ValueError as err:
    raise WorkflowError(f"config: {err}") from None
VARIANTS = list(VARIANT_ENTRIES)
# Logs of the report of this campaign (report_dir results/powered -> results_powered).
REPORT_TAG = "_".join(Path(config["report_dir"]).parts)
# Training seeds per data set (or fold): its own `seeds`, else the campaign's.
SEEDS = {d: plan.dataset_seeds(config, d) for d in DATASETS}
# Variants per data set (or fold): its own `variants`, else all (alphastomics.plan.dataset_variants).
try:
    DATASET_VARIANTS = {d: plan.dataset_variants(config, d) for d in DATASETS}
except ValueError as err:
    raise WorkflowError(f"config: {err}") from None


def runnable_baselines(methods):
    """Installed peers only (conda envs provide them all): see alphastomics.evaluation.peers.runnable."""
    from snakemake.settings.types import DeploymentMethod

    from alphastomics.evaluation.peers import runnable

    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return list(methods)
    kept, skipped = runnable(list(methods))
    for message in skipped:
        # loud: the report will compare against fewer peers than config.yaml's `baselines` promise
        logger.warning(
            f"WARNING: {message}; the report compares against {len(kept)} of "
            f"{len(methods)} configured peers ({', '.join(kept) or 'none'})"
        )
    return kept


BASELINES = runnable_baselines(config["baselines"])
PEERS = [peer_variant(m) for m in BASELINES]
# Peers are cheap to rerun but several are deterministic or slow (tangram, novoSpaRc): seeds of their own.
BASELINE_SEEDS = [int(s) for s in config["baseline_seeds"]]
MODEL_VARIANTS = "|".join(VARIANTS)
# The baseline rule has a method where the others have a variant.
PEER_LAYOUT = RUN_LAYOUT.replace("{variant}", peer_variant("{method}"))
RUN = f"results/{RUN_LAYOUT}"
PEER_RUN = f"results/{PEER_LAYOUT}"
RAW = "results/data/{dataset}/raw"
PROC = "results/data/{dataset}/processed"


wildcard_constraints:
    dataset="|".join(dict.fromkeys(DATASETS + SOURCES)),
    variant="|".join(VARIANTS + PEERS),
    seed=r"\d+",


def train_gpus(variant):
    return VARIANT_ENTRIES[variant].get("gpus", config["resources"]["train"]["gpus"])


def check_package_config():
    """Fail at parse time, before any job runs, when an override names an unknown key or a bad value."""
    from alphastomics import AlphaSTomicsError
    from alphastomics.config import load_config

    for dataset in DATASETS:
        for variant in DATASET_VARIANTS[dataset]:
            blocks = plan.run_blocks(config, dataset, variant, SEEDS[dataset][0])
            try:
                load_config([config["model_config"]], plan.set_items(*blocks))
            except AlphaSTomicsError as err:
                raise WorkflowError(
                    f"config: datasets.{dataset} / variants.{variant}: {err}"
                ) from None


check_package_config()


# --- params -------------------------------------------------------------------------------------------


def data_mirror():
    """The folder of published data files: $ALPHASTOMICS_DATA_MIRROR, else config `data_mirror` (a relative
    path is relative to the working directory, the repository root)."""
    return os.environ.get("ALPHASTOMICS_DATA_MIRROR") or config["data_mirror"]


def fetch_args(wildcards):
    """The data set's keys, and --local-copy / --mirror where fetch-data reads them: a changed mirror reruns
    the fetch of the data sets it serves, and only theirs."""
    entry = config["datasets"][wildcards.dataset]
    block = entry.get("dataset") or {}
    local = entry.get("local_copy")
    args = [plan.set_args(plan.dataset_block(config, wildcards.dataset))]
    if local:
        args.append(f"--local-copy {shlex.quote(local)}")
    elif block.get("files") or (
        block.get("source") == "bdtnp" and not block.get("path")
    ):
        args.append(f"--mirror {shlex.quote(data_mirror())}")
    return " ".join(args)


def preprocess_args(wildcards):
    return plan.set_args(plan.dataset_block(config, wildcards.dataset))


def raw_of(wildcards):
    """A fold's raw data are its data set's (fetched once)."""
    block = DATASET_ENTRIES[wildcards.dataset]["dataset"]
    return RAW.format(dataset=block.get("fold_of") or wildcards.dataset)


def run_blocks(wildcards):
    """Every override of this (dataset, variant, seed), lowest priority first (alphastomics.plan); the
    baseline rule has a method, not a variant, and peers never see a variant's overrides.
    """
    variant = getattr(wildcards, "variant", None)
    return plan.run_blocks(
        config, wildcards.dataset, variant, getattr(wildcards, "seed", None)
    )


def model_yaml():
    path = config["model_config"]
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise WorkflowError(
            f"{path}: model_config cannot be read ({err}); fix model_config in the config"
        )


def stage_args(stage):
    """Params of one stage: `args` (--config + the overrides it reads) and `settings` (their values)."""
    from alphastomics.config import stage_settings

    def args(wildcards):
        blocks = [stage_settings(stage, b) for b in run_blocks(wildcards)]
        return (
            f"--config {shlex.quote(config['model_config'])} {plan.set_args(*blocks)}"
        )

    def settings(wildcards):
        # Values as the stage will see them (model.yaml + overrides), as sorted JSON: the rerun trigger.
        resolved = model_yaml()
        for block in run_blocks(wildcards):
            resolved = plan.merge(resolved, block)
        return json.dumps(stage_settings(stage, resolved), sort_keys=True, default=str)

    return args, settings


train_args, train_settings = stage_args("train")
sample_args, sample_settings = stage_args("sample")
evaluate_args, evaluate_settings = stage_args("evaluate")
baseline_args, baseline_settings = stage_args("baseline")


def report_settings(wildcards):
    """The report shows model.yaml as run (provenance): its values, not its time stamp, rerun it."""
    return json.dumps(model_yaml(), sort_keys=True, default=str)


def train_launcher(wildcards):
    """One process per GPU under torchrun when a variant asks for several (DDP inside one node)."""
    gpus = train_gpus(wildcards.variant)
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m alphastomics"
    return "python -m alphastomics"


# --- inputs -------------------------------------------------------------------------------------------


def source_files(wildcards):
    """A user's h5ad/csv file(s) (dataset.path: a file or a folder of them): a new export reruns fetch_data
    and what follows. A missing path gives no input, so fetch-data itself says which key to fix.
    """
    block = config["datasets"][wildcards.dataset]["dataset"]
    if block.get("source") not in ("h5ad", "csv", "rdata") or not block.get("path"):
        return []
    path = Path(block["path"])
    suffixes = {"rdata": (".rdata", ".rda", ".rds")}.get(
        block["source"], (f".{block['source']}",)
    )
    if path.is_dir():
        return sorted(
            str(p)
            for p in path.iterdir()
            if p.suffix.lower() in suffixes and p.is_file()
        )
    return [str(path)] if path.is_file() else []


def evaluate_extra_inputs(wildcards):
    """Models give evaluate their checkpoint (diagnostics) and training summary (cost); peers have neither."""
    if is_peer(wildcards.variant):
        return {}
    return {
        "checkpoint": f"{RUN}/train/final.pt".format(**wildcards),
        "summary": f"{RUN}/train/train_summary.json".format(**wildcards),
    }


def evaluate_extra_args(wildcards, input):
    if is_peer(wildcards.variant):
        return ""
    return f"--checkpoint {input.checkpoint} --train-summary {input.summary}"


def model_runs():
    """Every model run: data sets x their variants x their seeds."""
    return [
        RUN.format(dataset=d, variant=v, seed=s)
        for d in DATASETS
        for v in DATASET_VARIANTS[d]
        for s in SEEDS[d]
    ]


def all_runs():
    """Every model run and every peer run (datasets x peers x baseline_seeds)."""
    peers = [
        RUN.format(dataset=d, variant=v, seed=s)
        for d in DATASETS
        for v in PEERS
        for s in BASELINE_SEEDS
    ]
    return model_runs() + peers


# --- resources ----------------------------------------------------------------------------------------


def gpu_mem(rule, gpus_of=lambda wildcards: 1):
    """mem_mb per job = per-GPU memory x GPUs x attempt (retries after OOM get more)."""
    mem = config["resources"][rule]["mem_mb"]
    return lambda wildcards, attempt: mem * gpus_of(wildcards) * attempt


def cpu_mem(kind):
    """mem_mb per CPU job of resources.KIND (cpu, evaluate) = its mem_mb x attempt."""
    mem = config["resources"][kind]["mem_mb"]
    return lambda wildcards, attempt: mem * attempt


def runtime(kind):
    """Minutes per job = configured runtime x attempt (a retry after a time limit gets longer)."""
    minutes = config["resources"][kind]["runtime"]
    return lambda wildcards, attempt: minutes * attempt


def verdict_args():
    """--contrasts/--primary-metrics of the report from config 'verdict' (absent: the package's declared
    defaults); a contrast naming a variant the config does not run stops the workflow before any job.
    """
    v = config.get("verdict") or {}
    for pair in v.get("contrasts", []):
        unknown = [name for name in pair if name not in VARIANTS]
        if unknown:
            raise WorkflowError(
                f"config: verdict.contrasts has {pair}, but {unknown[0]!r} is not a key of variants; "
                f"use one of {', '.join(VARIANTS)}"
            )
    args = ""
    if v.get("contrasts"):
        args += " --contrasts " + " ".join(f"{a}:{b}" for a, b in v["contrasts"])
    if v.get("primary_metrics"):
        args += " --primary-metrics " + " ".join(v["primary_metrics"])
    return args


# Retries of train and sample (no other rule: a retry cannot fix a config error or a missing file). Only the
# main Snakemake process retries, each time a new SLURM job with attempt x runtime and memory; inside a SLURM
# job (remote mode) a rule-level retry would run again in the same allocation, past its time limit (the
# plugin passes --retries 0 to the job, but a rule's `retries:` wins over it).
RETRIES = 0 if workflow.remote_exec else 2


def gpu_threads(rule, gpus_of=lambda wildcards: 1):
    """CPUs of a GPU job = cpus_per_gpu x GPUs: what SLURM gives it (--cpus-per-gpu), and what the job uses
    (--threads: torch threads and data-loader workers). Locally Snakemake caps it at --cores.
    """
    per_gpu = config["resources"][rule]["cpus_per_gpu"]
    return lambda wildcards: per_gpu * gpus_of(wildcards)


def gpu_model_on_retry(rule):
    """The GPU type of a retry (resources.RULE.retry_gpu_model): a GPU out of memory fails again on the
    same GPU whatever the host memory, so attempts 2 and 3 ask for that type (e.g. more GPU memory). ""
    (the first attempt, or unset) adds nothing to sbatch."""
    model = config["resources"][rule].get("retry_gpu_model") or ""
    return lambda wildcards, attempt: model if attempt > 1 else ""


# PyTorch's expandable segments: less fragmentation of GPU memory, so fewer out-of-memory failures at the
# same batch size (the user's own PYTORCH_CUDA_ALLOC_CONF wins).
CUDA_ALLOC = (
    "PYTORCH_CUDA_ALLOC_CONF=${{PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}} "
)


# --- the report ---------------------------------------------------------------------------------------


def compare_with_args(wildcards):
    """--with-verdict of the report: other campaigns' verdict files (config compare_with). Params, not
    inputs: another campaign writes them, and a missing one is a row of the page ("not run here"), not a
    missing input."""
    paths = config.get("compare_with") or []
    return (
        (" --with-verdict " + " ".join(shlex.quote(p) for p in paths)) if paths else ""
    )


def file_sha(path):
    """A file's sha256, or "absent": a param of the report for another campaign's file, so that a new
    version reruns the report and a missing one is not a missing input."""
    import hashlib

    return (
        hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if Path(path).is_file()
        else "absent"
    )


def compared_verdicts(wildcards):
    """Each compared verdict file's sha256 (or "absent"), config compare_with."""
    return {p: file_sha(p) for p in config.get("compare_with") or []}


def stability_args(wildcards):
    """--stability of the report: the learning-rate sweep's stability.json (config claims.stability). A
    param, not an input: make stability writes it (another campaign), and a missing file gives claims rows
    that say how to measure them."""
    path = (config.get("claims") or {}).get("stability")
    return f" --stability {shlex.quote(path)}" if path else ""


def stability_sha(wildcards):
    """The sweep file's sha256 (or "absent"), config claims.stability."""
    path = (config.get("claims") or {}).get("stability")
    return file_sha(path) if path else ""


def report_inputs(wildcards):
    """Every file the report reads, so that Snakemake orders it after them and reruns it when they change.

    Per run: eval/metrics.json and sections.csv (evaluate; attention_map.npz is written with them, in one
    folder rename), samples.parquet; per model run also train/train_summary.json (written after
    train/metrics.jsonl is complete: metrics.jsonl is no declared output, see model.smk); per data set the
    processed folder (its manifest.json, which the report finds beside the runs).
    """
    runs = all_runs()
    return {
        "data": expand(PROC, dataset=DATASETS),
        "metrics": [f"{r}/eval/metrics.json" for r in runs],
        "sections": [f"{r}/eval/sections.csv" for r in runs],
        "samples": [f"{r}/samples.parquet" for r in runs],
        "summaries": [f"{r}/train/train_summary.json" for r in model_runs()],
    }


def stability_inputs(wildcards):
    """What the sweep's analysis reads (rules/stability.smk): every run's scores and training log (the
    log is complete once train_summary.json is written); a config without `learning_rates` is no sweep.
    """
    if not config.get("learning_rates"):
        raise WorkflowError(
            "config: no `learning_rates`; the sweep is `make stability` (--configfile config/stability.yaml)"
        )
    runs = model_runs()
    return {
        "metrics": [f"{r}/eval/metrics.json" for r in runs],
        "summaries": [f"{r}/train/train_summary.json" for r in runs],
    }


def config_as_run(wildcards):
    """The workflow configuration as this run resolved it (config file(s), --config overrides such as
    model_config, schema defaults), as YAML with sorted keys: the report's provenance and the study's plan.
    A param, so a changed value reruns its jobs, and a comment, key order or file name does not.
    """
    header = "# The workflow configuration as run: config file(s), --config overrides, defaults\n"
    plain = json.loads(
        json.dumps(config, default=str)
    )  # no shared objects: no YAML anchors
    return header + yaml.safe_dump(plain, sort_keys=True, default_flow_style=None)


# --- reassembling cells (rules/reassemble.smk) --------------------------------------------------------

from types import SimpleNamespace

REASSEMBLE = config.get("reassemble") or {}


def check_reassemble():
    """The `reassemble` block names a data set, variant and seed this config trains: else stop before any job."""
    if not REASSEMBLE:
        return
    dataset, variant, seed = (REASSEMBLE[k] for k in ("dataset", "variant", "seed"))
    if dataset not in DATASETS:
        raise WorkflowError(
            f"config: reassemble.dataset is {dataset!r}; use one of {', '.join(DATASETS)}"
        )
    if variant not in DATASET_VARIANTS[dataset]:
        raise WorkflowError(
            f"config: reassemble.variant is {variant!r}; use one of {dataset}'s: "
            f"{', '.join(DATASET_VARIANTS[dataset])}"
        )
    if seed != "best" and seed not in SEEDS[dataset]:
        raise WorkflowError(
            f"config: reassemble.seed is {seed}, but {dataset} trains seeds {SEEDS[dataset]}; use one "
            "of them or best"
        )


check_reassemble()


def reassemble_name():
    return REASSEMBLE.get("name") or Path(REASSEMBLE["h5ad"]).stem


def reassemble_runs():
    """The run folders whose checkpoints the stage gets: one seed, or every seed for `best`."""
    dataset, seed = REASSEMBLE["dataset"], REASSEMBLE["seed"]
    seeds = SEEDS[dataset] if seed == "best" else [seed]
    return [
        RUN.format(dataset=dataset, variant=REASSEMBLE["variant"], seed=s)
        for s in seeds
    ]


def reassemble_inputs(wildcards):
    if not REASSEMBLE:
        raise WorkflowError(
            "config: no `reassemble` section; add one (config/README.md) to reassemble cells"
        )
    if wildcards.name != reassemble_name():
        raise WorkflowError(
            f"results/reassemble/{wildcards.name}.h5ad: config `reassemble` makes "
            f"results/reassemble/{reassemble_name()}.h5ad; ask for that file or set reassemble.name"
        )
    runs = reassemble_runs()
    inputs = {
        "h5ad": REASSEMBLE["h5ad"],
        "checkpoints": [f"{r}/train/final.pt" for r in runs],
    }
    if len(runs) > 1:
        inputs["summaries"] = [f"{r}/train/train_summary.json" for r in runs]
    return inputs


def _reassemble_run():
    """The first run, as wildcards: its sample stage's settings (they do not depend on the seed)."""
    return SimpleNamespace(
        dataset=REASSEMBLE["dataset"],
        variant=REASSEMBLE["variant"],
        seed=SEEDS[REASSEMBLE["dataset"]][0],
    )


def reassemble_args(wildcards):
    """--config + the sample stage's overrides of the run, then the stage's own options."""
    args = [sample_args(_reassemble_run()), f"--draws {REASSEMBLE['draws']}"]
    args += [f"--min-gene-share {REASSEMBLE['min_gene_share']}"]
    for key, option in (("group_key", "--group-key"), ("layer", "--layer")):
        if REASSEMBLE.get(key):
            args.append(f"{option} {shlex.quote(REASSEMBLE[key])}")
    return " ".join(args)


def reassemble_settings(wildcards):
    """The rerun trigger: the sampling settings as resolved and the `reassemble` block."""
    block = json.dumps(REASSEMBLE, sort_keys=True, default=str)
    return sample_settings(_reassemble_run()) + block


def reassembled_target(wildcards):
    if not REASSEMBLE:
        raise WorkflowError(
            "config: no `reassemble` section; add one (config/README.md) to reassemble cells"
        )
    return f"results/reassemble/{reassemble_name()}.h5ad"
