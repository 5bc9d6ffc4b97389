# Upper bound (evaluation side): the same Mask R-CNN, same schedule, trained on the GROUND-TRUTH
# masks of the same training images, in its own run folder {RUN}/upper_bound/. The rule
# gt_training_masks is the ONLY place where training data comes from ground truth; nothing of
# the weakly supervised pipeline reads its output (tests/test_upper_bound.py checks the rules).
# The commands are the pipeline's own: train-maskrcnn, predict, and the evaluation rule
# (rules/report.smk) -> {RUN}/upper_bound/evaluation_<split>.json.

UPPER_BOUND = bool(config["upper_bound"]) and HAS_GT
if config["upper_bound"] and not HAS_GT:
    print("tag2mask: upper_bound is on but the dataset has no ground truth: the upper bound "
          "is skipped", file=sys.stderr)
UB = f"{RUN}/upper_bound"

if UPPER_BOUND:

    rule gt_training_masks:
        input:
            gt=f"{DATA}/gt/train.json",
            manifest=f"{DATA}/manifest.json",
        output:
            f"{UB}/gt_training_masks.h5",
        params:
            code=code_digest("upper_bound", "evaluation", "store", "masks", "manifest"),
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
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli gt-training-masks --gt {input.gt:q} --manifest {input.manifest:q} "
            "--out {output:q} > {log:q} 2>&1"

    rule train_upper_bound:
        input:
            store=f"{UB}/gt_training_masks.h5",
            manifest=f"{DATA}/manifest.json",
        output:
            model=f"{UB}/model.pt",
            log=f"{UB}/log.jsonl",
        params:
            options=options("maskrcnn"),
            out_dir=lambda w, output: os.path.dirname(output.model),
            code=code_digest("train_maskrcnn", *_MASKRCNN_CODE),
        log:
            f"{RUN}/logs/train_upper_bound.log",
        benchmark:
            f"{RUN}/benchmarks/train_upper_bound.tsv"
        conda:
            "../envs/tag2mask.yaml"
        threads: 4
        resources:
            mem_mb=lambda wc, attempt: 16000 * attempt,
            runtime=lambda wc, attempt: 24 * 60 * attempt,
            gpu=int(MASKRCNN["device"] == "cuda"),
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli train-maskrcnn --store {input.store:q} --manifest {input.manifest:q} "
            "--out-dir {params.out_dir:q} --config {params.options:q} --threads {threads} "
            "--no-progress > {log:q} 2>&1"

    rule predict_upper_bound:
        input:
            model=f"{UB}/model.pt",
            manifest=f"{DATA}/manifest.json",
        output:
            f"{UB}/predictions_{{split}}.json",
        wildcard_constraints:
            split="train|val",
        params:
            options=options("maskrcnn"),
            code=code_digest("predict", *_MASKRCNN_CODE),
        log:
            f"{RUN}/logs/predict_upper_bound_{{split}}.log",
        benchmark:
            f"{RUN}/benchmarks/predict_upper_bound_{{split}}.tsv"
        conda:
            "../envs/tag2mask.yaml"
        threads: 4
        resources:
            mem_mb=lambda wc, attempt: 8000 * attempt,
            runtime=lambda wc, attempt: 120 * attempt,
            gpu=int(MASKRCNN["device"] == "cuda"),
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli predict --checkpoint {input.model:q} --manifest {input.manifest:q} "
            "--split {wildcards.split} --out {output:q} --config {params.options:q} "
            "--threads {threads} --no-progress > {log:q} 2>&1"
