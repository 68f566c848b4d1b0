# The learning-curve study (docs/training.md, "How long to train"): not part of `make run`'s default target.
# `make learning-curve` = snakemake learning_curve. Its training runs live under results/study/runs; they
# are the study's own bookkeeping (resumed by the stage itself), so only the tables and the figure are
# declared outputs.


rule learning_curve:
    input:
        data=expand(PROC, dataset=DATASETS),
        model_config=config["model_config"],
    output:
        table="results/study/learning_curve.tsv",
        summary="results/study/learning_curve_summary.md",
        figure="results/study/learning_curve.png",
    log:
        "results/logs/learning_curve.log",
    benchmark:
        "results/benchmarks/learning_curve.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    params:
        # the workflow config as given (--configfile), for its data sets and variants
        plan=lambda wildcards: (
            workflow.configfiles[-1] if workflow.configfiles else "config/config.yaml"
        ),
        out=lambda wildcards, output: os.path.dirname(output.table),
    shell:
        "python -m alphastomics learning-curve --config {input.model_config} --plan {params.plan}"
        " --data-root results/data --out {params.out} --jobs {threads} > {log} 2>&1"
