# Stage `classifier` (tag2mask/classifier/): the peak classifier, trained on the train split's
# image-level tags only. The training checkpoint (classifier/last.pt) is not a rule output, so
# Snakemake keeps it when a killed job is rerun (--rerun-incomplete) and training resumes
# after its last epoch. classifier.processes > 1: torchrun with that many processes and as
# many GPUs (common.smk).


rule train_classifier:
    input:
        manifest=MANIFEST,
    output:
        checkpoint=CLASSIFIER,
        log=f"{RUN}/classifier/log.jsonl",
    params:
        **action_params("classifier train"),
        out_dir=lambda w, output: os.path.dirname(output.checkpoint),
    log:
        log_file("train_classifier"),
    benchmark:
        benchmark_file("train_classifier")
    conda:
        ENV
    # First, on two threads: the whole weak path waits for it (on one thread beside another
    # job it takes 1.6x as long). A bigger node can raise it: --set-threads train_classifier=8.
    # Snakemake's scheduler sums the priorities of the jobs it starts together: 1000 so that two
    # one-thread jobs (proposals, the upper bound) never take its cores first.
    threads: 2
    priority: 1000
    resources:
        **job_resources(8000, 12 * 60, gpu=training_gpus("classifier"),
                        processes=training_processes("classifier")),
    shell:
        tag2mask("classifier train --manifest {input.manifest:q} --config {params.options:q} "
                 "--out-dir {params.out_dir:q} --threads {threads} "
                 "--processes {resources.processes} --no-progress")


CLASSIFIER_TARGETS = [CLASSIFIER]
CLASSIFIER_REPORT_INPUTS = {"classifier_log": f"{RUN}/classifier/log.jsonl"}
