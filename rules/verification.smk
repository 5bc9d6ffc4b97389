# Stage `verification` (tag2mask/verification/): the classifier checks each pseudo mask of a
# shard (its box, and the image blanked outside it) and the mask's confidence is rescored
# (config `verification`). Between the method that makes the pseudo masks (pseudo_masks.smk,
# which writes METHOD_SHARD) and the gather rule (common.smk). Reads the classifier, the images
# and the manifest; never ground truth.

if VERIFIED:

    rule verify:
        input:
            store=METHOD_SHARD,
            checkpoint=CLASSIFIER,
            manifest=MANIFEST,
        output:
            shard_store(f"{RUN}/pseudo_masks/shards/{{shard}}.h5"),
        wildcard_constraints:
            shard=r"\d+",
        params:
            **action_params("verification rescore"),
        threads: 1
        priority: 80  # on the way to Mask R-CNN
        log:
            log_file("verify/{shard}"),
        benchmark:
            benchmark_file("verify/{shard}")
        conda:
            ENV
        resources:
            **job_resources(4000, 60, gpu=one_gpu("verification")),
        shell:
            tag2mask("verification rescore --store {input.store:q} "
                     "--checkpoint {input.checkpoint:q} --manifest {input.manifest:q} "
                     "--config {params.options:q} --out {output:q} --threads {threads} "
                     "--no-progress")
