# The learning-curve study (docs/training.md, "How long to train"): not part of `make run`'s default target.
# `make learning-curve` = snakemake learning_curve. One job per (data set, variant, seed) trains one run and
# scores its kept checkpoints (study_run: a GPU job like train, under --profile slurm on the GPU
# partition), one per data set scores the kNN peer (study_peer, CPU), and learning_curve writes the tables
# and the figure from what they scored. The training runs live under results/study/runs; they are the
# study's own bookkeeping (train resumes from their checkpoints), so only the scores, the tables and the
# figure are declared outputs. Each job writes its --plan (the configuration as run, config_as_run in
# common.smk, a param: a changed config reruns the study's jobs) beside its log.

from alphastomics.analysis import study as STUDY

STUDY_VARIANTS = [v for v in STUDY.DEFAULT_VARIANTS if v in VARIANTS]
STUDY_SEEDS = list(STUDY.DEFAULT_SEEDS)
STUDY_BUDGETS = " ".join(str(b) for b in sorted(STUDY.DEFAULT_BUDGETS))
STUDY_CMD = (
    'plan={log}.plan.yaml && printf "%s" {params.plan:q} > "$plan" &&'
    ' python -m alphastomics learning-curve --config {params.model_config} --plan "$plan"'
    f" --data-root results/data --out results/study --budgets {STUDY_BUDGETS}"
)


rule study_run:
    input:
        data=PROC,
    output:
        expand(
            "results/study/runs/{{dataset}}/{{variant}}/seed{{seed}}/step{budget}/eval/metrics.json",
            budget=sorted(STUDY.DEFAULT_BUDGETS),
        ),
    log:
        "results/logs/study_run/{dataset}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/study_run/{dataset}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=MODEL_VARIANTS,
    retries: RETRIES
    conda:
        "../envs/model.yaml"
    threads: gpu_threads("train")
    resources:
        gpu=config["resources"]["train"]["gpus"],
        gpu_model=gpu_model_on_retry("train"),
        cpus_per_gpu=config["resources"]["train"]["cpus_per_gpu"],
        nodes=1,
        mem_mb=gpu_mem("train"),
        runtime=runtime("train"),
    params:
        plan=config_as_run,
        model_config=config["model_config"],
    shell:
        f"{STUDY_CMD} --only runs --datasets {{wildcards.dataset}} --variants {{wildcards.variant}}"
        " --seeds {wildcards.seed} --jobs 1 > {log} 2>&1"


rule study_peer:
    input:
        data=PROC,
    output:
        "results/study/runs/{dataset}/peer_knn/seed0/eval/metrics.json",
    log:
        "results/logs/study_peer/{dataset}.log",
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        plan=config_as_run,
        model_config=config["model_config"],
    shell:
        f"{STUDY_CMD} --only peers --datasets {{wildcards.dataset}} --jobs 1 > {{log}} 2>&1"


rule learning_curve:
    input:
        runs=expand(
            rules.study_run.output,
            dataset=DATASETS,
            variant=STUDY_VARIANTS,
            seed=STUDY_SEEDS,
        ),
        peers=expand(rules.study_peer.output, dataset=DATASETS),
    output:
        table="results/study/learning_curve.tsv",
        summary="results/study/learning_curve_summary.md",
        figure="results/study/learning_curve.png",
    log:
        "results/logs/learning_curve.log",
    benchmark:
        "results/benchmarks/learning_curve.tsv"
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        plan=config_as_run,
        model_config=config["model_config"],
    shell:
        f"{STUDY_CMD} --variants {' '.join(STUDY_VARIANTS)} --seeds {' '.join(map(str, STUDY_SEEDS))}"
        " --no-train --jobs 1 > {log} 2>&1"
