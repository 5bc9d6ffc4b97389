# Stage `peaks` (tag2mask/peaks/): class peaks and peak response maps of the classifier (PRM),
# per shard of the images of `peaks.splits` (train by default), then gathered into the peaks
# store (rule gather, common.smk). Quality against ground truth (precision, instance recall,
# duplicates) only with GT.


rule extract_peaks:
    input:
        manifest=MANIFEST,
        checkpoint=CLASSIFIER,
    output:
        store=shard_store(f"{RUN}/peaks/shards/{{shard}}.h5"),
        panels=directory(f"{RUN}/peaks/panels/{{shard}}"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        **action_params("peaks extract"),
        num_shards=len(SHARDS),
    threads: 1  # the shards side by side (--set-threads extract_peaks=N on a bigger node)
    priority: 80  # on the way to the pseudo masks
    log:
        log_file("extract_peaks/{shard}"),
    benchmark:
        benchmark_file("extract_peaks/{shard}")
    conda:
        ENV
    resources:
        **job_resources(8000, 120, gpu=one_gpu("peaks")),
    shell:
        tag2mask("peaks extract --manifest {input.manifest:q} --checkpoint {input.checkpoint:q} "
                 "--config {params.options:q} --shard {wildcards.shard} "
                 "--num-shards {params.num_shards} --out {output.store:q} "
                 "--panels {output.panels:q} --threads {threads} --no-progress")


# GT of the splits that have peaks (evaluation only)
PEAKS_GT_SPLITS = [s for s in config["peaks"]["splits"] if s in GT_SPLITS]


if PEAKS_GT_SPLITS:

    rule evaluate_peaks:
        input:
            peaks=PEAKS_STORE,
            gt=expand(f"{DATA}/gt/{{split}}.json", split=PEAKS_GT_SPLITS),
        output:
            f"{RUN}/peaks/quality.json",
        params:
            code=code_digest("peaks.cli:run_evaluate"),
        log:
            log_file("evaluate_peaks"),
        benchmark:
            benchmark_file("evaluate_peaks")
        conda:
            ENV
        resources:
            **job_resources(4000, 30),
        shell:
            tag2mask("peaks evaluate --peaks {input.peaks:q} --gt {input.gt:q} --out {output:q}")


# the peaks' quality file, where the run has ground truth of their splits
PEAKS_QUALITY = {"peaks_quality": f"{RUN}/peaks/quality.json"} if PEAKS_GT_SPLITS else {}
PEAKS_TARGETS = [*PEAKS_QUALITY.values()] or [PEAKS_STORE]
PEAKS_REPORT_INPUTS = {"peaks": PEAKS_STORE, **PEAKS_QUALITY}
