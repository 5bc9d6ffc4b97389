# Stage `self_training` (tag2mask/self_training/): rounds 1..R (config self_training.rounds;
# 0 = none). Round r takes the model of round r-1 (round 0 = {RUN}/maskrcnn), its predictions
# on the TRAINING images (never ground truth), the peaks and round r-1's pseudo masks, and
# merges them into round r's pseudo masks (tag2mask.self_training.merge documents the rule).
# Mask R-CNN is then retrained from scratch on them with the same schedule, as the model
# self_training/round_<r> of rules/maskrcnn.smk, and predicted and evaluated like round 0.

# round r's model folder and pseudo-mask store (round 0: the Mask R-CNN stage's folder and the
# pseudo masks)
round_dir = lambda r: f"{RUN}/maskrcnn" if int(r) == 0 else f"{RUN}/self_training/round_{r}"
round_store = lambda r: PSEUDO_MASKS if int(r) == 0 else f"{round_dir(r)}/pseudo_masks.h5"


rule self_training_masks:
    input:
        predictions=lambda w: f"{round_dir(int(w.round) - 1)}/predictions_train.json",
        previous=lambda w: round_store(int(w.round) - 1),
        peaks=PEAKS_STORE,
        manifest=MANIFEST,
    output:
        f"{RUN}/self_training/round_{{round}}/pseudo_masks.h5",
    wildcard_constraints:
        round=r"[1-9][0-9]*",
    params:
        **action_params("self_training masks"),
    log:
        log_file("self_training_masks_{round}"),
    benchmark:
        benchmark_file("self_training_masks_{round}")
    conda:
        ENV
    resources:
        **job_resources(4000, 60),
    shell:
        tag2mask("self_training masks --predictions {input.predictions:q} "
                 "--peaks {input.peaks:q} --previous {input.previous:q} "
                 "--manifest {input.manifest:q} --config {params.options:q} --out {output:q}")


SELF_TRAINING_TRAINING_STORES = {f"self_training/round_{r}": round_store(r) for r in ROUNDS}
SELF_TRAINING_REPORT_INPUTS = {
    name: path for r in ROUNDS for name, path in [
        (f"round_store_{r}", round_store(r)),
        (f"round_log_{r}", f"{round_dir(r)}/log.jsonl"),
        *([(f"round_eval_{r}", f"{round_dir(r)}/evaluation_{EVAL_SPLIT}.json")] if HAS_GT
          else []),
    ]
}
