rule baseline:
    input:
        data=PROC,
    output:
        f"{PEER_RUN}/samples.parquet",
    log:
        f"results/logs/baseline/{PEER_LAYOUT}.log",
    benchmark:
        f"results/benchmarks/baseline/{PEER_LAYOUT}.tsv"
    wildcard_constraints:
        method="|".join(BASELINES),
    conda:
        # one environment per peer method (their dependencies conflict); written by the peers issue
        "../envs/{method}.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        args=baseline_args,
        settings=baseline_settings,
    shell:
        "python -m alphastomics baseline --method {wildcards.method} --seed {wildcards.seed}"
        " --data_dir {input.data} --out {output} {params.args} > {log} 2>&1"


# One rule scores models and peer baselines alike: both write the same samples format.
rule evaluate:
    input:
        unpack(evaluate_extra_inputs),
        samples=f"{RUN}/samples.parquet",
        data=PROC,
    output:
        metrics=f"{RUN}/eval/metrics.json",
        sections=f"{RUN}/eval/sections.csv",
    log:
        f"results/logs/evaluate/{RUN_LAYOUT}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_LAYOUT}.tsv"
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        mem_mb=cpu_mem("evaluate"),
        runtime=runtime("evaluate"),
    params:
        args=evaluate_args,
        settings=evaluate_settings,
        extra=evaluate_extra_args,
        run_id="--run-id {dataset} {variant} {seed}",
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    shell:
        "python -m alphastomics evaluate --samples {input.samples} --data_dir {input.data}"
        " {params.extra} {params.run_id} --out {params.out} --threads {threads} {params.args} > {log} 2>&1"
