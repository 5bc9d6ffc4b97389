# Stage `verification` (tag2mask/verification/): the classifier checks each pseudo mask of a
# shard (its box, and the image blanked outside it) and the mask's confidence is rescored
# (config `verification`). Between the method that makes the pseudo masks (retrieval.smk or
# irnet.smk, which write METHOD_SHARD) and the gather rule (common.smk). Reads the classifier,
# the images and the manifest; never ground truth.

if VERIFICATION["enabled"]:

    rule verify:
        input:
            store=METHOD_SHARD,
            checkpoint=f"{RUN}/classifier/classifier.pt",
            manifest=MANIFEST,
        output:
            f"{RUN}/pseudo_masks/shards/{{shard}}.h5",
        wildcard_constraints:
            shard=r"\d+",
        params:
            options=options("verification"),
            code=code("verification.cli:run_rescore"),
        threads: 1
        log:
            f"{RUN}/logs/verify/{{shard}}.log",
        benchmark:
            f"{RUN}/benchmarks/verify/{{shard}}.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 60 * attempt,
            gpu=int(VERIFICATION["device"] == "cuda"),
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli verification rescore --store {input.store:q} "
            "--checkpoint {input.checkpoint:q} --manifest {input.manifest:q} "
            "--config {params.options:q} --out {output:q} --threads {threads} --no-progress "
            "> {log:q} 2>&1"
