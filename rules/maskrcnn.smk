# Stage 3a: Mask R-CNN trained on the pseudo masks, then its predictions (COCO results JSON)
# on the val split, or on train when there is no val split. Ground truth is never an input.
# Training checkpoints (maskrcnn/checkpoints/) are not rule outputs, so Snakemake keeps them
# when a killed job is rerun (--rerun-incomplete) and training resumes after the last epoch.

MASKRCNN = config["maskrcnn"]
PREDICT_SPLIT = "val" if "val" in SPLITS else "train"
_MASKRCNN_CODE = ("maskrcnn", "backbones", "store", "masks", "images", "manifest")


rule train_maskrcnn:
    input:
        store=f"{RUN}/pseudo_masks/pseudo_masks.h5",
        manifest=f"{DATA}/manifest.json",
    output:
        model=f"{RUN}/maskrcnn/model.pt",
        log=f"{RUN}/maskrcnn/log.jsonl",
    params:
        options=options("maskrcnn"),
        out_dir=lambda w, output: os.path.dirname(output.model),
        code=code_digest("train_maskrcnn", *_MASKRCNN_CODE),
    log:
        f"{RUN}/logs/train_maskrcnn.log",
    benchmark:
        f"{RUN}/benchmarks/train_maskrcnn.tsv"
    conda:
        "../envs/tag2mask.yaml"
    # One torch thread by default: on a CPU shared with other jobs (or with the DataLoader
    # workers), more intra-op threads made training several times slower here. A dedicated
    # CPU node can raise it: snakemake --set-threads train_maskrcnn=8.
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 24 * 60 * attempt,
        gpu=int(MASKRCNN["device"] == "cuda"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli train-maskrcnn --store {input.store:q} --manifest {input.manifest:q} "
        "--out-dir {params.out_dir:q} --config {params.options:q} --threads {threads} "
        "--no-progress > {log:q} 2>&1"


rule predict:
    input:
        model=f"{RUN}/maskrcnn/model.pt",
        manifest=f"{DATA}/manifest.json",
    output:
        f"{RUN}/maskrcnn/predictions_{{split}}.json",
    wildcard_constraints:
        split="train|val",
    params:
        options=options("maskrcnn"),
        code=code_digest("predict", *_MASKRCNN_CODE),
    log:
        f"{RUN}/logs/predict_{{split}}.log",
    benchmark:
        f"{RUN}/benchmarks/predict_{{split}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    threads: 1  # as train_maskrcnn; --set-threads predict=N to change
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=int(MASKRCNN["device"] == "cuda"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli predict --checkpoint {input.model:q} --manifest {input.manifest:q} "
        "--split {wildcards.split} --out {output:q} --config {params.options:q} "
        "--threads {threads} --no-progress > {log:q} 2>&1"


# what `rule all` asks of this stage
MASKRCNN_TARGET = f"{RUN}/maskrcnn/predictions_{PREDICT_SPLIT}.json"
