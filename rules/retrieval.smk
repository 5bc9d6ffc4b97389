# Stage `retrieval` (tag2mask/retrieval/): one mask proposal per class peak, by PRM's score or
# WISE's rule (config `retrieval`), per shard (CPU only), then gathered into the pseudo-mask
# store (rule gather, common.smk). Reads the peaks and proposals stores and the manifest; never
# ground truth.


# Only with pseudo_masks.method retrieval (common.smk: PSEUDO_MASKS_METHOD); irnet.smk makes
# the pseudo masks otherwise.
if PSEUDO_MASKS_METHOD == "retrieval":

    rule retrieve:
        input:
            peaks=PEAKS_STORE,
            proposals=PROPOSALS_STORE,
            manifest=MANIFEST,
        output:
            store=METHOD_SHARD,
            panels=directory(f"{RUN}/pseudo_masks/panels/{{shard}}"),
        wildcard_constraints:
            shard=r"\d+",
        params:
            options=options("retrieval"),
            num_shards=len(SHARDS),
            code=code("retrieval.cli:run_select"),
        threads: 1
        log:
            f"{RUN}/logs/retrieve/{{shard}}.log",
        benchmark:
            f"{RUN}/benchmarks/retrieve/{{shard}}.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 60 * attempt,
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli retrieval select --peaks {input.peaks:q} "
            "--proposals {input.proposals:q} --manifest {input.manifest:q} "
            "--config {params.options:q} --shard {wildcards.shard} "
            "--num-shards {params.num_shards} --out {output.store:q} --panels {output.panels:q} "
            "--threads {threads} > {log:q} 2>&1"
