# Stage `self_training` (tag2mask/self_training/): rounds 1..R (config self_training.rounds;
# 0 = none). Round r takes the model of round r-1 (round 0 = {RUN}/maskrcnn), its predictions
# on the TRAINING images (never ground truth), the peaks and round r-1's pseudo masks, and
# merges them into round r's pseudo masks (tag2mask.self_training.merge documents the rule).
# Mask R-CNN is then retrained from scratch on them with the same schedule, as the model
# self_training/round_<r> of rules/maskrcnn.smk, and predicted and evaluated like round 0.


# round r's model folder and pseudo-mask store (round 0: the Mask R-CNN stage's folder and
# retrieval's store)
round_dir = lambda r: f"{RUN}/maskrcnn" if int(r) == 0 else f"{ST}/round_{r}"
round_store = lambda r: PSEUDO_MASKS if int(r) == 0 else f"{ST}/round_{r}/pseudo_masks.h5"
TRAINING_STORES.update({f"self_training/round_{r}": round_store(r) for r in ROUNDS})


rule self_training_masks:
    input:
        predictions=lambda w: f"{round_dir(int(w.round) - 1)}/predictions_train.json",
        previous=lambda w: round_store(int(w.round) - 1),
        peaks=PEAKS_STORE,
        manifest=MANIFEST,
    output:
        f"{ST}/round_{{round}}/pseudo_masks.h5",
    wildcard_constraints:
        round=r"[1-9][0-9]*",
    params:
        options=options("self_training"),
        code=code("self_training.cli:run_masks"),
    log:
        f"{RUN}/logs/self_training_masks_{{round}}.log",
    benchmark:
        f"{RUN}/benchmarks/self_training_masks_{{round}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli self_training masks --predictions {input.predictions:q} "
        "--peaks {input.peaks:q} --previous {input.previous:q} --manifest {input.manifest:q} "
        "--config {params.options:q} --out {output:q} > {log:q} 2>&1"
