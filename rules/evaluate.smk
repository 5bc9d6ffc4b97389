# Evaluation: score instance masks against ground truth (only datasets with GT).
# Pseudo masks are scored on the train split, where they were made: how good the training
# targets of Mask R-CNN are (WISE's comparison: the trained model should beat them).


if HAS_GT:

    rule evaluate_pseudo_masks:
        input:
            gt=f"{DATA}/gt/train.json",
            manifest=f"{DATA}/manifest.json",
            predictions=f"{RUN}/pseudo_masks/pseudo_masks.h5",
        output:
            f"{RUN}/pseudo_masks/evaluation.json",
        params:
            options=options("evaluation"),
            code=code_digest("evaluation", "evaluate_cli", "store", "masks", "manifest"),
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
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli evaluate --gt {input.gt:q} --predictions {input.predictions:q} "
            "--manifest {input.manifest:q} --config {params.options:q} --out {output:q} "
            "> {log:q} 2>&1"
