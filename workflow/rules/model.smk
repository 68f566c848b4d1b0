# Training writes RUN/train/checkpoints/ and RUN/train/metrics.jsonl itself and resumes from the latest
# checkpoint when restarted. Neither is declared as an output on purpose: Snakemake deletes the declared
# outputs of a failed or incomplete job, and a preempted job must find its checkpoints on the next attempt.
# A forced rerun (-R, --forcerun, --force, a changed input) trains from step 0 all the same: Snakemake
# deletes final.pt before the job starts, and train discards a finished checkpoint without final.pt.
#
# Under SLURM (SLURM_JOB_ID set) train gets the job's time limit, resources.runtime: it saves a checkpoint
# and exits 75 ten minutes before it (at most half the limit), and the retry (attempt x runtime) resumes.
# Snakemake empties the log before each attempt; a failed attempt's log is printed by Snakemake
# (show-failed-logs) and SLURM's log of that job is kept (.snakemake/slurm_logs/rule_train/...).


rule train:
    input:
        data=PROC,
    output:
        final=f"{RUN}/train/final.pt",
        summary=f"{RUN}/train/train_summary.json",
    log:
        f"results/logs/train/{RUN_LAYOUT}.log",
    benchmark:
        f"results/benchmarks/train/{RUN_LAYOUT}.tsv"
    wildcard_constraints:
        variant=MODEL_VARIANTS,
    retries: RETRIES
    conda:
        "../envs/model.yaml"
    threads: gpu_threads("train", lambda wildcards: train_gpus(wildcards.variant))
    resources:
        gpu=lambda wildcards: train_gpus(wildcards.variant),
        gpu_model=gpu_model_on_retry("train"),
        cpus_per_gpu=config["resources"]["train"]["cpus_per_gpu"],
        nodes=1,
        mem_mb=gpu_mem("train", lambda wildcards: train_gpus(wildcards.variant)),
        runtime=runtime("train"),
    params:
        launcher=train_launcher,
        args=train_args,
        settings=train_settings,
        out=lambda wildcards, output: os.path.dirname(output.final),
    shell:
        CUDA_ALLOC
        + "{params.launcher} train --restart-if-config-changed --data_dir {input.data} --out {params.out}"
        " --threads {threads} ${{SLURM_JOB_ID:+--time-limit-min {resources.runtime}}}"
        " {params.args} > {log} 2>&1"


rule sample:
    input:
        data=PROC,
        checkpoint=rules.train.output.final,
    output:
        f"{RUN}/samples.parquet",
    log:
        f"results/logs/sample/{RUN_LAYOUT}.log",
    benchmark:
        f"results/benchmarks/sample/{RUN_LAYOUT}.tsv"
    wildcard_constraints:
        variant=MODEL_VARIANTS,
    retries: RETRIES
    conda:
        "../envs/model.yaml"
    threads: gpu_threads("sample")
    resources:
        gpu=config["resources"]["sample"]["gpus"],
        gpu_model=gpu_model_on_retry("sample"),
        cpus_per_gpu=config["resources"]["sample"]["cpus_per_gpu"],
        nodes=1,
        mem_mb=gpu_mem("sample"),
        runtime=runtime("sample"),
    params:
        args=sample_args,
        settings=sample_settings,
    shell:
        CUDA_ALLOC + "python -m alphastomics sample --checkpoint {input.checkpoint}"
        " --data_dir {input.data} --out {output} {params.args} > {log} 2>&1"
