rule verdict:
    input:
        unpack(report_inputs),
    output:
        f"{config['report_dir']}/verdict.json",
    log:
        f"results/logs/verdict/{REPORT_TAG}.log",
    benchmark:
        f"results/benchmarks/verdict/{REPORT_TAG}.tsv"
    conda:
        "../envs/report.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        runs=all_runs(),
        model_config=config["model_config"],
        verdict=verdict_args(),
        compare_with=compare_with_args,
        compared=compared_verdicts,
        stability=stability_args,
        stability_sha=stability_sha,
    shell:
        "python -m alphastomics verdict --config {params.model_config} --runs {params.runs} --out {output}"
        "{params.verdict}{params.compare_with}{params.stability} > {log} 2>&1"


rule report:
    input:
        unpack(report_inputs),
        verdict=f"{config['report_dir']}/verdict.json",
    output:
        html=report(
            f"{config['report_dir']}/report.html",
            caption="../report/report.rst",
            category="Comparison",
        ),
        snapshot=f"{config['report_dir']}/config_as_run.yaml",
    log:
        f"results/logs/report/{REPORT_TAG}.log",
    benchmark:
        f"results/benchmarks/report/{REPORT_TAG}.tsv"
    conda:
        "../envs/report.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        runs=all_runs(),
        model_config=config["model_config"],
        settings=report_settings,
        snapshot=config_as_run,
        stability=stability_args,
        stability_sha=stability_sha,
    shell:
        "printf '%s' {params.snapshot:q} > {output.snapshot} &&"
        " python -m alphastomics report --config {params.model_config} --verdict {input.verdict}"
        " --runs {params.runs} --config-snapshot {output.snapshot} --out {output.html}{params.stability}"
        " > {log} 2>&1"
