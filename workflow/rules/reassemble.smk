# Reassemble a lab's dissociated cells (config `reassemble`; docs/data.md, "Reassemble your own cells"): a
# model this config trains places cells that have expression and no coordinates. Not part of `all`:
# `snakemake --cores 2 reassembled` (or the file results/reassemble/NAME.h5ad) runs it after the training it
# needs. `seed: best` hands the stage every seed's checkpoint of the variant; it takes the one whose
# train_summary.json has the lowest best_val_loss (validation sections only: the cells placed choose nothing).
# Sampling settings are those of the run's sample stage, so a placement here is the one sample would make.


rule reassemble:
    input:
        unpack(reassemble_inputs),
    output:
        "results/reassemble/{name}.h5ad",
    log:
        "results/logs/reassemble/{name}.log",
    benchmark:
        "results/benchmarks/reassemble/{name}.tsv"
    wildcard_constraints:
        name=r"[^/]+",
    conda:
        "../envs/model.yaml"
    threads: gpu_threads("sample")
    resources:
        gpu=config["resources"]["sample"]["gpus"],
        cpus_per_gpu=config["resources"]["sample"]["cpus_per_gpu"],
        nodes=1,
        mem_mb=gpu_mem("sample"),
        runtime=runtime("sample"),
    params:
        args=reassemble_args,
        settings=reassemble_settings,
    shell:
        CUDA_ALLOC
        + "python -m alphastomics reassemble --checkpoint {input.checkpoints}"
        " --h5ad {input.h5ad} --out {output} {params.args} > {log} 2>&1"


rule reassembled:
    input:
        reassembled_target,
