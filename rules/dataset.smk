# Stage `dataset` (tag2mask/dataset/): read the dataset into a manifest (tags only) and COCO
# ground truth (evaluation only).


rule prepare_dataset:
    output:
        manifest=MANIFEST,
        gt=expand(f"{DATA}/gt/{{split}}.json", split=GT_SPLITS),
    params:
        **action_params("dataset prepare"),
        out_dir=lambda w, output: os.path.dirname(output.manifest),
    log:
        log_file("prepare_dataset"),
    benchmark:
        benchmark_file("prepare_dataset")
    conda:
        ENV
    resources:
        **job_resources(4000, 60),
    shell:
        tag2mask("dataset prepare --config {params.options:q} --out-dir {params.out_dir:q}")


DATASET_TARGETS = [MANIFEST]
DATASET_REPORT_INPUTS = {"manifest": MANIFEST,
                         **{f"gt_{s}": f"{DATA}/gt/{s}.json" for s in GT_SPLITS}}
