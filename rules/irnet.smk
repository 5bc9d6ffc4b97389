# Stage `irnet` (tag2mask/irnet/): IRNet's pseudo masks (Ahn et al. 2019), the second way to
# make them (config pseudo_masks.method: irnet). From the trained classifier, on the train
# images and their tags only (never ground truth):
#   compute_cams (sharded) -> gather {RUN}/cams/cams.h5: multi-scale + flip CAMs
#   label_relations -> {RUN}/irnet/relation_seeds.h5: confident fg / bg seeds (relation labels)
#   train_irnet -> {RUN}/irnet/irnet.pt: boundary + displacement branches (checkpoint every
#       epoch: irnet/last.pt, not an output, so a killed job resumes after its last epoch;
#       irnet.processes > 1: that many processes, torchrun, and GPUs, common.smk)
#   extract_instances (sharded, only with method irnet) -> pseudo_masks/shards/<i>.h5, which
#       the gather rule (common.smk) joins into PSEUDO_MASKS in place of retrieval's.
# Each rule passes only the `irnet` keys its action reads, so that changing, say, the random
# walk's beta reruns the instances and not the training.

IRNET = config["irnet"]
IRNET_GPU = int(IRNET["device"] == "cuda")
_IRNET_COMMON = ("input_size", "feature_stride", "device")
_IRNET_KEYS = {
    "cams": _IRNET_COMMON + ("cam_scales", "cam_flip"),
    "relations": ("fg_threshold", "bg_threshold", "relation_radius", "seed_superpixels"),
    "train": _IRNET_COMMON + ("relation_radius", "train_backbone", "width", "epochs",
                              "batch_size", "lr", "weight_decay", "flip", "num_workers", "seed"),
    "instances": _IRNET_COMMON + ("seed_superpixels", "centroid_iterations", "centroid_threshold", "walk_radius",
                                  "beta", "walk_steps", "bg_score", "keep_fragments",
                                  "score_threshold"),
}
irnet_options = lambda action: json.dumps({k: IRNET[k] for k in _IRNET_KEYS[action]},
                                          sort_keys=True)


rule compute_cams:
    input:
        manifest=MANIFEST,
        checkpoint=f"{RUN}/classifier/classifier.pt",
    output:
        f"{RUN}/cams/shards/{{shard}}.h5",
    wildcard_constraints:
        shard=r"\d+",
    params:
        options=irnet_options("cams"),
        num_shards=len(SHARDS),
        code=code("irnet.cli:run_cams"),
    threads: 2
    log:
        f"{RUN}/logs/compute_cams/{{shard}}.log",
    benchmark:
        f"{RUN}/benchmarks/compute_cams/{{shard}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=IRNET_GPU,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli irnet cams --manifest {input.manifest:q} "
        "--checkpoint {input.checkpoint:q} --config {params.options:q} "
        "--shard {wildcards.shard} --num-shards {params.num_shards} --out {output:q} "
        "--threads {threads} --no-progress > {log:q} 2>&1"


rule label_relations:
    input:
        cams=f"{RUN}/cams/cams.h5",
        manifest=MANIFEST,
    output:
        f"{RUN}/irnet/relation_seeds.h5",
    params:
        options=irnet_options("relations"),
        code=code("irnet.cli:run_relations"),
    log:
        f"{RUN}/logs/label_relations.log",
    benchmark:
        f"{RUN}/benchmarks/label_relations.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli irnet relations --cams {input.cams:q} "
        "--manifest {input.manifest:q} --config {params.options:q} --out {output:q} --no-progress > {log:q} 2>&1"


rule train_irnet:
    input:
        manifest=MANIFEST,
        checkpoint=f"{RUN}/classifier/classifier.pt",
        seeds=f"{RUN}/irnet/relation_seeds.h5",
    output:
        model=f"{RUN}/irnet/irnet.pt",
        log=f"{RUN}/irnet/log.jsonl",
    params:
        options=irnet_options("train"),
        out_dir=lambda w, output: os.path.dirname(output.model),
        code=code("irnet.cli:run_train"),
    threads: 2
    log:
        f"{RUN}/logs/train_irnet.log",
    benchmark:
        f"{RUN}/benchmarks/train_irnet.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 12 * 60 * attempt,
        gpu=training_gpus("irnet"),
        processes=training_processes("irnet"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli irnet train --manifest {input.manifest:q} "
        "--checkpoint {input.checkpoint:q} --seeds {input.seeds:q} "
        "--config {params.options:q} --out-dir {params.out_dir:q} --threads {threads} "
        "--processes {resources.processes} --no-progress > {log:q} 2>&1"


# The switch: only with method irnet does this rule write the pseudo-mask shards (retrieval.smk
# defines `retrieve` only with method retrieval), so one rule makes PSEUDO_MASKS.
if PSEUDO_MASKS_METHOD == "irnet":

    rule extract_instances:
        input:
            manifest=MANIFEST,
            model=f"{RUN}/irnet/irnet.pt",
            cams=f"{RUN}/cams/cams.h5",
        output:
            METHOD_SHARD,
        wildcard_constraints:
            shard=r"\d+",
        params:
            options=irnet_options("instances"),
            num_shards=len(SHARDS),
            code=code("irnet.cli:run_instances"),
        threads: 1
        log:
            f"{RUN}/logs/extract_instances/{{shard}}.log",
        benchmark:
            f"{RUN}/benchmarks/extract_instances/{{shard}}.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 120 * attempt,
            gpu=IRNET_GPU,
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli irnet instances --manifest {input.manifest:q} "
            "--model {input.model:q} --cams {input.cams:q} --config {params.options:q} "
            "--shard {wildcards.shard} --num-shards {params.num_shards} --out {output:q} "
            "--threads {threads} --no-progress > {log:q} 2>&1"
