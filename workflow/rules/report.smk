rule report:
    input:
        metrics=expand("{run}/eval/metrics.json", run=all_runs()),
    output:
        html=report(
            f"{config['report_dir']}/report.html",
            caption="../report/report.rst",
            category="Comparison",
        ),
        verdict=f"{config['report_dir']}/verdict.json",
    log:
        f"results/logs/report/{REPORT_TAG}.log",
    benchmark:
        f"results/benchmarks/report/{REPORT_TAG}.tsv"
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
        # the workflow config this run was given (provenance); a param, so reordering its keys reruns nothing
        snapshot=workflow.configfiles[-1],
        verdict=verdict_args(),
    shell:
        "python -m alphastomics report --config {params.model_config} --runs {params.runs}"
        " --config-snapshot {params.snapshot} --out {output.html} --verdict {output.verdict}{params.verdict}"
        " > {log} 2>&1"
