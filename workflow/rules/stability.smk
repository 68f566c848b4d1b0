# The learning-rate sweep (docs/training.md, "Stability and convergence"): `make stability` = snakemake
# stability --configfile config/stability.yaml. The sweep's runs are ordinary train -> sample -> evaluate
# jobs (its `learning_rates` make every variant V the variants V_lr{rate}: alphastomics.plan.expand_variants);
# this rule reads them (train/metrics.jsonl, written before train_summary.json, and eval/metrics.json) and
# writes the JSON, the tables and the figure. Not part of `all`. Its --plan is the configuration as run
# (config_as_run, a param: a changed config reruns it), written beside its log.


rule stability:
    input:
        unpack(stability_inputs),
    output:
        json=f"{config['report_dir']}/stability.json",
        markdown=f"{config['report_dir']}/stability.md",
        figure=f"{config['report_dir']}/stability.png",
    log:
        f"results/logs/stability/{REPORT_TAG}.log",
    benchmark:
        f"results/benchmarks/stability/{REPORT_TAG}.tsv"
    conda:
        "../../environment.yml"
    threads: config["resources"]["cpu"]["threads"]
    resources:
        mem_mb=cpu_mem("cpu"),
        runtime=runtime("cpu"),
    params:
        plan=config_as_run,
        out=lambda wildcards, output: os.path.dirname(output.json),
    shell:
        'plan={log}.plan.yaml && printf "%s" {params.plan:q} > "$plan" &&'
        ' python -m alphastomics stability --plan "$plan" --root results --out {params.out} > {log} 2>&1'
