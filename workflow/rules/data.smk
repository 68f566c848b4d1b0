rule fetch_data:
    input:
        source_files,
    output:
        directory(RAW),
    log:
        "results/logs/fetch_data/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_data/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        args=fetch_args,
    shell:
        "python -m alphastomics fetch-data --out {output} {params.args} > {log} 2>&1"


rule preprocess:
    input:
        raw_of,
    output:
        directory(PROC),
    log:
        "results/logs/preprocess/{dataset}.log",
    benchmark:
        "results/benchmarks/preprocess/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        args=preprocess_args,
    shell:
        "python -m alphastomics preprocess --raw {input} --out {output} {params.args} > {log} 2>&1"
