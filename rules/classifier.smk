# Stage `classifier` (tag2mask/classifier/): the peak classifier, trained on the train split's
# image-level tags only. The training checkpoint (classifier/last.pt) is not a rule output, so
# Snakemake keeps it when a killed job is rerun (--rerun-incomplete) and training resumes
# after its last epoch. classifier.processes > 1: torchrun with that many processes and as
# many GPUs (common.smk).


rule train_classifier:
    input:
        manifest=MANIFEST,
    output:
        checkpoint=f"{RUN}/classifier/classifier.pt",
        log=f"{RUN}/classifier/log.jsonl",
    params:
        options=options("classifier"),
        out_dir=lambda w, output: os.path.dirname(output.checkpoint),
        code=code("classifier.cli:run_train"),
    log:
        f"{RUN}/logs/train_classifier.log",
    benchmark:
        f"{RUN}/benchmarks/train_classifier.tsv"
    conda:
        "../envs/tag2mask.yaml"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 12 * 60 * attempt,
        gpu=training_gpus("classifier"),
        processes=training_processes("classifier"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli classifier train --manifest {input.manifest:q} "
        "--config {params.options:q} --out-dir {params.out_dir:q} --threads {threads} "
        "--processes {resources.processes} --no-progress > {log:q} 2>&1"
