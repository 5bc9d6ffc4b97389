# Stage `peaks` (tag2mask/peaks/): class peaks and peak response maps of the classifier (PRM),
# per shard of the images of `peaks.splits` (train by default), then gathered into the peaks
# store (rule gather, common.smk). Quality against ground truth (precision, instance recall,
# duplicates) only with GT.

PEAKS = config["peaks"]


rule extract_peaks:
    input:
        manifest=MANIFEST,
        checkpoint=f"{RUN}/classifier/classifier.pt",
    output:
        store=f"{RUN}/peaks/shards/{{shard}}.h5",
        panels=directory(f"{RUN}/peaks/panels/{{shard}}"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        options=options("peaks"),
        num_shards=len(SHARDS),
        code=code("peaks.cli:run_extract"),
    threads: 2
    log:
        f"{RUN}/logs/extract_peaks/{{shard}}.log",
    benchmark:
        f"{RUN}/benchmarks/extract_peaks/{{shard}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=int(PEAKS["device"] == "cuda"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli peaks extract --manifest {input.manifest:q} "
        "--checkpoint {input.checkpoint:q} --config {params.options:q} "
        "--shard {wildcards.shard} --num-shards {params.num_shards} --out {output.store:q} "
        "--panels {output.panels:q} --threads {threads} --no-progress > {log:q} 2>&1"


# GT of the splits that have peaks (evaluation only)
PEAKS_GT_SPLITS = [s for s in PEAKS["splits"] if s in GT_SPLITS]

if HAS_GT and PEAKS_GT_SPLITS:

    rule evaluate_peaks:
        input:
            peaks=PEAKS_STORE,
            gt=expand(f"{DATA}/gt/{{split}}.json", split=PEAKS_GT_SPLITS),
        output:
            f"{RUN}/peaks/quality.json",
        params:
            code=code("peaks.cli:run_evaluate"),
        log:
            f"{RUN}/logs/evaluate_peaks.log",
        benchmark:
            f"{RUN}/benchmarks/evaluate_peaks.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 30 * attempt,
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli peaks evaluate --peaks {input.peaks:q} "
            "--gt {input.gt:q} --out {output:q} > {log:q} 2>&1"


# what `rule all` asks of this stage
PEAKS_TARGET = f"{RUN}/peaks/quality.json" if HAS_GT and PEAKS_GT_SPLITS else PEAKS_STORE
