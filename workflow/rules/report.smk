def verdict_args():
    """--contrasts/--primary-metrics from config 'verdict' (absent: the package's declared defaults); a
    contrast naming a variant the config does not run stops the workflow before any job."""
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


rule report:
    input:
        metrics=expand("{run}/eval/metrics.json", run=all_runs()),
        model_config=config["model_config"],
    output:
        report(
            "results/report.html",
            caption="../report/report.rst",
            category="Comparison",
        ),
        verdict="results/verdict.json",
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../../environment.yml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem,
        runtime=runtime("cpu"),
    params:
        runs=all_runs(),
        verdict=verdict_args(),
    shell:
        "python -m alphastomics report --config {input.model_config} --runs {params.runs}"
        " --out {output[0]} --verdict {output.verdict}{params.verdict} > {log} 2>&1"
