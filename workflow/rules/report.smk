rule report:
    input:
        metrics=expand("{run}/eval/metrics.json", run=all_runs()),
    output:
        report(
            "results/report.html",
            caption="../report/report.rst",
            category="Comparison",
        ),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../envs/report.yaml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem,
        runtime=runtime("cpu"),
    params:
        runs=all_runs(),
        model_config=config["model_config"],
        settings=report_settings,
    shell:
        "python -m alphastomics report --config {params.model_config} --runs {params.runs}"
        " --out {output} > {log} 2>&1"
