# The learning-curve study (docs/training.md, "How long to train"): not part of `make run`'s default target.
# `make learning-curve` = snakemake learning_curve. The workflow runs every job: one training run per (data
# set, variant, seed) of max(budgets) steps that keeps its checkpoint at each budget (study_train, a GPU job
# like train), one sample and one evaluate per kept checkpoint (study_sample, study_evaluate), the kNN peer
# once per data set (study_peer), and learning_curve collects the scores into the tables and the figure
# (alphastomics/analysis/study.py: collect and plot only). A budget past the step where a run stopped early is
# scored from that run's final weights. Each run gets the overrides of the workflow's run of the same name
# (stage_args in common.smk), plus the study's step budget, patience and kept checkpoints.

from alphastomics.analysis import study as STUDY

STUDY_VARIANTS = [v for v in STUDY.DEFAULT_VARIANTS if v in VARIANTS]
STUDY_SEEDS = list(STUDY.DEFAULT_SEEDS)
STUDY_BUDGETS = sorted(STUDY.DEFAULT_BUDGETS)
STUDY_RUN = "results/study/runs/{dataset}/{variant}/seed{seed}"
STUDY_LOG = "{dataset}/{variant}/seed{seed}"
STUDY_TRAIN_SETS = (
    f"--set training.max_steps={max(STUDY_BUDGETS)}"
    f" --set training.early_stopping_patience={STUDY.DEFAULT_PATIENCE}"
    f" --set 'training.keep_checkpoints=[{','.join(map(str, STUDY_BUDGETS))}]'"
)


rule study_train:
    input:
        data=PROC,
    output:
        final=f"{STUDY_RUN}/train/final.pt",
        summary=f"{STUDY_RUN}/train/train_summary.json",
    log:
        f"results/logs/study_train/{STUDY_LOG}.log",
    benchmark:
        f"results/benchmarks/study_train/{STUDY_LOG}.tsv"
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
        args=train_args,
        settings=train_settings,
        out=lambda wildcards, output: os.path.dirname(output.final),
    shell:
        CUDA_ALLOC
        + "python -m alphastomics train --restart-if-config-changed --data_dir {input.data} --out {params.out}"
        " --threads {threads} ${{SLURM_JOB_ID:+--time-limit-min {resources.runtime}}}"
        f" {{params.args}} {STUDY_TRAIN_SETS} > {{log}} 2>&1"


rule study_sample:
    input:
        data=PROC,
        final=rules.study_train.output.final,
    output:
        f"{STUDY_RUN}/step{{budget}}/samples.parquet",
    log:
        f"results/logs/study_sample/{STUDY_LOG}/step{{budget}}.log",
    wildcard_constraints:
        variant=MODEL_VARIANTS,
        budget=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: gpu_threads("sample")
    resources:
        gpu=config["resources"]["sample"]["gpus"],
        cpus_per_gpu=config["resources"]["sample"]["cpus_per_gpu"],
        nodes=1,
        mem_mb=gpu_mem("sample"),
        runtime=runtime("sample"),
    params:
        args=sample_args,
        settings=sample_settings,
        kept=lambda wildcards, input: os.path.join(
            os.path.dirname(input.final),
            "checkpoints",
            f"step{int(wildcards.budget):06d}.pt",
        ),
    shell:
        # the checkpoint kept at this budget; a run that stopped early before it: its final weights
        'ckpt={params.kept:q}; [ -f "$ckpt" ] || ckpt={input.final:q}; '
        + CUDA_ALLOC
        + 'python -m alphastomics sample --checkpoint "$ckpt" --data_dir {input.data} --out {output}'
        " {params.args} > {log} 2>&1"


rule study_evaluate:
    input:
        data=PROC,
        samples=f"{STUDY_RUN}/step{{budget}}/samples.parquet",
    output:
        f"{STUDY_RUN}/step{{budget}}/eval/metrics.json",
    log:
        f"results/logs/study_evaluate/{STUDY_LOG}/step{{budget}}.log",
    wildcard_constraints:
        budget=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        mem_mb=cpu_mem("evaluate"),
        runtime=runtime("evaluate"),
    params:
        args=evaluate_args,
        settings=evaluate_settings,
        out=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "python -m alphastomics evaluate --samples {input.samples} --data_dir {input.data}"
        " --run-id {wildcards.dataset} {wildcards.variant} {wildcards.seed} --out {params.out}"
        " --threads {threads} {params.args} > {log} 2>&1"


rule study_peer:
    input:
        data=PROC,
    output:
        samples="results/study/runs/{dataset}/peer_knn/seed0/samples.parquet",
        metrics="results/study/runs/{dataset}/peer_knn/seed0/eval/metrics.json",
    log:
        "results/logs/study_peer/{dataset}.log",
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        baseline=lambda wildcards: baseline_args(
            SimpleNamespace(dataset=wildcards.dataset, seed=0)
        ),
        evaluate=lambda wildcards: evaluate_args(
            SimpleNamespace(dataset=wildcards.dataset, seed=0)
        ),
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    shell:
        "(python -m alphastomics baseline --method knn --seed 0 --data_dir {input.data} --out {output.samples}"
        " {params.baseline} && python -m alphastomics evaluate --samples {output.samples}"
        " --data_dir {input.data} --run-id {wildcards.dataset} peer_knn 0 --out {params.out}"
        " {params.evaluate}) > {log} 2>&1"


rule learning_curve:
    input:
        runs=expand(
            f"{STUDY_RUN}/step{{budget}}/eval/metrics.json",
            dataset=DATASETS,
            variant=STUDY_VARIANTS,
            seed=STUDY_SEEDS,
            budget=STUDY_BUDGETS,
        ),
        peers=expand(rules.study_peer.output.metrics, dataset=DATASETS),
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
        datasets=" ".join(DATASETS),
        variants=" ".join(STUDY_VARIANTS),
        seeds=" ".join(map(str, STUDY_SEEDS)),
        budgets=" ".join(map(str, STUDY_BUDGETS)),
    shell:
        "python -m alphastomics learning-curve --out results/study --datasets {params.datasets}"
        " --variants {params.variants} --seeds {params.seeds} --budgets {params.budgets} > {log} 2>&1"
