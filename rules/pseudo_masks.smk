# Stage `pseudo_masks` (tag2mask/pseudo_masks/): the pseudo masks Mask R-CNN trains on, made per
# shard by the method `pseudo_masks.method` names (a plug-in: tag2mask.core.methods),
# from the files of the run it names (common.smk: PSEUDO_MASK_INPUTS), then verified
# (verification.smk) and gathered into PSEUDO_MASKS (rule gather, common.smk). No method reads
# ground truth; their evaluation is evaluation.smk's.

rule make_pseudo_masks:
    input:
        **PSEUDO_MASK_INPUTS,
        manifest=MANIFEST,
    output:
        store=shard_store(METHOD_SHARD),
        panels=directory(f"{RUN}/pseudo_masks/panels/{{shard}}"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        **action_params("pseudo_masks make", section=PSEUDO_MASK_METHOD.section),
        method=PSEUDO_MASK_METHOD.name,
        method_code=module_digest(PSEUDO_MASK_METHOD.module),
        inputs=lambda w, input: [f"{name}={input[name]}" for name in PSEUDO_MASK_INPUTS],
        num_shards=len(SHARDS),
    threads: 1
    priority: 80  # on the way to Mask R-CNN
    log:
        log_file("make_pseudo_masks/{shard}"),
    benchmark:
        benchmark_file("make_pseudo_masks/{shard}")
    conda:
        ENV
    resources:
        **job_resources(4000, 120, gpu=one_gpu(PSEUDO_MASK_METHOD.section)),
    shell:
        tag2mask("pseudo_masks make --method {params.method} --input {params.inputs:q} "
                 "--manifest {input.manifest:q} --config {params.options:q} "
                 "--shard {wildcards.shard} --num-shards {params.num_shards} "
                 "--out {output.store:q} --panels {output.panels:q} --threads {threads} "
                 "--no-progress")


# The pseudo masks as a COCO instances JSON (with a confidence cut), for any COCO detector.
PSEUDO_MASKS_COCO = f"{RUN}/pseudo_masks/pseudo_masks.coco.json"


rule export_pseudo_masks:
    input:
        store=PSEUDO_MASKS,
        manifest=MANIFEST,
    output:
        PSEUDO_MASKS_COCO,
    params:
        **action_params("pseudo_masks export-coco"),
        # pseudo_masks.export_min_score, or Mask R-CNN's training cut
        min_score=(config["maskrcnn"]["min_score"]
                   if config["pseudo_masks"]["export_min_score"] is None
                   else config["pseudo_masks"]["export_min_score"]),
    log:
        log_file("export_pseudo_masks"),
    benchmark:
        benchmark_file("export_pseudo_masks")
    conda:
        ENV
    resources:
        **job_resources(4000, 30),
    shell:
        tag2mask("pseudo_masks export-coco --store {input.store:q} --manifest {input.manifest:q} "
                 "--min-score {params.min_score} --out {output:q}")


PSEUDO_MASKS_TARGETS = [PSEUDO_MASKS, PSEUDO_MASKS_COCO]
PSEUDO_MASKS_REPORT_INPUTS = {"pseudo_masks": PSEUDO_MASKS}
