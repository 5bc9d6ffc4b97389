# Stage `upper_bound` (tag2mask/upper_bound/), EVALUATION SIDE: the same Mask R-CNN, same
# schedule, trained on the GROUND-TRUTH masks of the same training images, in its own folder
# {RUN}/upper_bound/. The rule gt_training_masks is the ONLY place where training data comes
# from ground truth; only the model `upper_bound` trains on its output (rules/maskrcnn.smk),
# and nothing of the weakly supervised pipeline reads it (tests/test_upper_bound.py checks the
# rules and the planned jobs). It is predicted and evaluated like the other models.

UPPER_BOUND_STORE = f"{RUN}/upper_bound/gt_training_masks.h5"

if UPPER_BOUND:

    rule gt_training_masks:
        input:
            gt=f"{DATA}/gt/train.json",
            manifest=MANIFEST,
        output:
            UPPER_BOUND_STORE,
        params:
            code=code_digest("upper_bound.cli:run_gt_masks"),
        log:
            log_file("gt_training_masks"),
        benchmark:
            benchmark_file("gt_training_masks")
        conda:
            ENV
        resources:
            **job_resources(4000, 30),
        shell:
            tag2mask("upper_bound gt-masks --gt {input.gt:q} --manifest {input.manifest:q} "
                     "--out {output:q}")


UPPER_BOUND_TRAINING_STORES = {"upper_bound": UPPER_BOUND_STORE} if UPPER_BOUND else {}
UPPER_BOUND_REPORT_INPUTS = (
    {"upper_bound_eval": f"{RUN}/upper_bound/evaluation_{EVAL_SPLIT}.json",
     "upper_bound_log": f"{RUN}/upper_bound/log.jsonl"} if UPPER_BOUND else {}
)
