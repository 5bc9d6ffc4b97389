# Stage `dataset` (tag2mask/dataset/): read the dataset into a manifest (tags only) and COCO
# ground truth (evaluation only).


rule prepare_dataset:
    output:
        manifest=MANIFEST,
        gt=expand(f"{DATA}/gt/{{split}}.json", split=GT_SPLITS),
    params:
        options=options("dataset"),
        out_dir=lambda w, output: os.path.dirname(output.manifest),
        code=code("dataset.cli:run_prepare"),
    log:
        f"{RUN}/logs/prepare_dataset.log",
    benchmark:
        f"{RUN}/benchmarks/prepare_dataset.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli dataset prepare --config {params.options:q} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"
