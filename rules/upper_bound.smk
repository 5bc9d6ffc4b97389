# Stage `upper_bound` (tag2mask/upper_bound/), EVALUATION SIDE: the same Mask R-CNN, same
# schedule, trained on the GROUND-TRUTH masks of the same training images, in its own folder
# {RUN}/upper_bound/. The rule gt_training_masks is the ONLY place where training data comes
# from ground truth; only the model `upper_bound` trains on its output (rules/maskrcnn.smk),
# and nothing of the weakly supervised pipeline reads it (tests/test_upper_bound.py checks the
# rules and the planned jobs). It is predicted and evaluated like the other models.

if UPPER_BOUND:
    UB_STORE = f"{UB}/gt_training_masks.h5"
    TRAINING_STORES["upper_bound"] = UB_STORE

    rule gt_training_masks:
        input:
            gt=f"{DATA}/gt/train.json",
            manifest=MANIFEST,
        output:
            UB_STORE,
        params:
            code=code("upper_bound.cli:run_gt_masks"),
        log:
            f"{RUN}/logs/gt_training_masks.log",
        benchmark:
            f"{RUN}/benchmarks/gt_training_masks.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 30 * attempt,
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli upper_bound gt-masks --gt {input.gt:q} "
            "--manifest {input.manifest:q} --out {output:q} > {log:q} 2>&1"
