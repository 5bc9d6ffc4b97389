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
            **action_params("evaluation score"),
        log:
            log_file("evaluate_pseudo_masks"),
        benchmark:
            benchmark_file("evaluate_pseudo_masks")
        conda:
            ENV
        resources:
            **job_resources(4000, 30),
        shell:
            tag2mask("evaluation score --gt {input.gt:q} --predictions {input.predictions:q} "
                     "--manifest {input.manifest:q} --config {params.options:q} "
                     "--out {output:q}")

    rule evaluate_predictions:
        input:
            gt=f"{DATA}/gt/{{split}}.json",
            manifest=MANIFEST,
            predictions=f"{RUN}/{{model}}/predictions_{{split}}.json",
        output:
            f"{RUN}/{{model}}/evaluation_{{split}}.json",
        wildcard_constraints:
            model=MODELS,
            split="train|val",
        params:
            **action_params("evaluation score"),
        log:
            log_file("evaluate_predictions/{model}_{split}"),
        benchmark:
            benchmark_file("evaluate_predictions/{model}_{split}")
        conda:
            ENV
        resources:
            **job_resources(4000, 30),
        shell:
            tag2mask("evaluation score --gt {input.gt:q} --predictions {input.predictions:q} "
                     "--manifest {input.manifest:q} --config {params.options:q} "
                     "--out {output:q}")


EVALUATION_REPORT_INPUTS = (
    {"pseudo_eval": f"{RUN}/pseudo_masks/evaluation.json"} if HAS_GT else {}
)
EVALUATION_TARGETS = list(EVALUATION_REPORT_INPUTS.values())
