def report_inputs(wildcards):
    """Every file the report reads, so that Snakemake orders it after them and reruns it when they change.

    Per run: eval/metrics.json and sections.csv (evaluate; attention_map.npz is written with them, in one
    folder rename), samples.parquet; per model run also train/train_summary.json (written after
    train/metrics.jsonl is complete: metrics.jsonl is no declared output, see model.smk); per data set the
    processed folder (its manifest.json, which the report finds beside the runs).
    """
    runs = all_runs()
    models = [
        RUN.format(dataset=d, variant=v, seed=s)
        for d in DATASETS
        for v in VARIANTS
        for s in SEEDS
    ]
    return {
        "data": expand(PROC, dataset=DATASETS),
        "metrics": [f"{r}/eval/metrics.json" for r in runs],
        "sections": [f"{r}/eval/sections.csv" for r in runs],
        "samples": [f"{r}/samples.parquet" for r in runs],
        "summaries": [f"{r}/train/train_summary.json" for r in models],
    }


def config_as_run(wildcards):
    """The workflow configuration as this run resolved it (config file(s), --config overrides such as
    model_config, schema defaults), as YAML: the report's provenance, and a rerun trigger as a param.
    """
    sources = ", ".join(os.path.relpath(f) for f in workflow.configfiles)
    header = f"# The workflow configuration as run: {sources}, with --config overrides and defaults\n"
    plain = json.loads(
        json.dumps(config, default=str)
    )  # no shared objects: no YAML anchors
    return header + yaml.safe_dump(plain, sort_keys=False, default_flow_style=None)


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(
            f"{config['report_dir']}/report.html",
            caption="../report/report.rst",
            category="Comparison",
        ),
        verdict=f"{config['report_dir']}/verdict.json",
        snapshot=f"{config['report_dir']}/config_as_run.yaml",
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
        snapshot=config_as_run,
        verdict=verdict_args(),
    shell:
        "printf '%s' {params.snapshot:q} > {output.snapshot} &&"
        " python -m alphastomics report --config {params.model_config} --runs {params.runs}"
        " --config-snapshot {output.snapshot} --out {output.html}"
        " --verdict {output.verdict}{params.verdict} > {log} 2>&1"
