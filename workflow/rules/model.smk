# Training writes RUN/train/checkpoints/ and RUN/train/metrics.jsonl itself and resumes from the latest
# checkpoint when restarted. Neither is declared as an output on purpose: Snakemake deletes the declared
# outputs of a failed or incomplete job, and a preempted job must find its checkpoints on the next attempt.


rule train:
    input:
        data=PROC,
        model_config=config["model_config"],
    output:
        final=f"{RUN}/train/final.pt",
        summary=f"{RUN}/train/train_summary.json",
    log:
        "results/logs/train/{dataset}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=MODEL_VARIANTS,
    conda:
        "../../environment.yml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=lambda wildcards: train_gpus(wildcards.variant),
        cpus_per_gpu=config["resources"]["train"]["cpus_per_gpu"],
        mem_mb=gpu_mem("train", lambda wildcards: train_gpus(wildcards.variant)),
        runtime=runtime("train"),
    params:
        launcher=train_launcher,
        args=run_args,
        out=lambda wildcards, output: os.path.dirname(output.final),
    shell:
        "{params.launcher} train --restart-if-config-changed --data_dir {input.data} --out {params.out} "
        "{params.args} > {log} 2>&1"


rule sample:
    input:
        data=PROC,
        checkpoint=rules.train.output.final,
        model_config=config["model_config"],
    output:
        f"{RUN}/samples.parquet",
    log:
        "results/logs/sample/{dataset}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/sample/{dataset}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=MODEL_VARIANTS,
    conda:
        "../../environment.yml"
    threads: config["resources"]["sample"]["threads"]
    resources:
        gpu=config["resources"]["sample"]["gpus"],
        cpus_per_gpu=config["resources"]["sample"]["cpus_per_gpu"],
        mem_mb=gpu_mem("sample"),
        runtime=runtime("sample"),
    params:
        args=run_args,
    shell:
        "python -m alphastomics sample --checkpoint {input.checkpoint} --data_dir {input.data}"
        " --out {output} {params.args} > {log} 2>&1"
