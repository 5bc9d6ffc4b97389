# Stage `evaluation` (tag2mask/evaluation/), evaluation side: scores instance masks against
# ground truth with one evaluator (only datasets with GT).
# - evaluate_pseudo_masks: the pseudo masks on the train split, where they were made: how good
#   Mask R-CNN's training targets are (WISE's comparison: the trained model should beat them).
# - evaluate_predictions: any model's predictions (rules/maskrcnn.smk: maskrcnn, upper_bound,
#   self_training/round_<r>) -> {RUN}/<model>/evaluation_<split>.json. Mask R-CNN is also
#   scored on the training images, the images its pseudo masks were made for, so the report
#   can say whether it beats its own pseudo masks.

if HAS_GT:

    rule evaluate_pseudo_masks:
        input:
            gt=f"{DATA}/gt/train.json",
            manifest=MANIFEST,
            predictions=PSEUDO_MASKS,
        output:
            f"{RUN}/pseudo_masks/evaluation.json",
        params:
            options=options("evaluation"),
            code=code("evaluation.cli:run_score"),
        log:
            f"{RUN}/logs/evaluate_pseudo_masks.log",
        benchmark:
            f"{RUN}/benchmarks/evaluate_pseudo_masks.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 30 * attempt,
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli evaluation score --gt {input.gt:q} "
            "--predictions {input.predictions:q} --manifest {input.manifest:q} "
            "--config {params.options:q} --out {output:q} > {log:q} 2>&1"

    rule evaluate_predictions:
        input:
            gt=f"{DATA}/gt/{{split}}.json",
            manifest=MANIFEST,
            predictions=f"{RUN}/{{model}}/predictions_{{split}}.json",
        output:
            f"{RUN}/{{model}}/evaluation_{{split}}.json",
        params:
            options=options("evaluation"),
            code=code("evaluation.cli:run_score"),
        log:
            f"{RUN}/logs/evaluate_predictions/{{model}}_{{split}}.log",
        benchmark:
            f"{RUN}/benchmarks/evaluate_predictions/{{model}}_{{split}}.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 30 * attempt,
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli evaluation score --gt {input.gt:q} "
            "--predictions {input.predictions:q} --manifest {input.manifest:q} "
            "--config {params.options:q} --out {output:q} > {log:q} 2>&1"
