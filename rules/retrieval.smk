# Stage 3: proposal retrieval (CPU only): one mask proposal per class peak, by PRM's score or
# WISE's rule (config `retrieval`), per shard, then gathered into the pseudo-mask store.
# Reads the peaks and proposals stores and the manifest; never ground truth.

_RETRIEVAL_CODE = code_digest("retrieval", "retrieval_cli", "pseudo_masks", "panels", "store",
                              "masks", "manifest", "shards", "images")


rule retrieve:
    input:
        peaks=f"{RUN}/peaks/peaks.h5",
        proposals=f"{RUN}/proposals/proposals.h5",
        manifest=f"{DATA}/manifest.json",
    output:
        store=f"{RUN}/pseudo_masks/shards/{{shard}}.h5",
        panels=directory(f"{RUN}/pseudo_masks/panels/{{shard}}"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        options=options("retrieval"),
        num_shards=len(SHARDS),
        code=_RETRIEVAL_CODE,
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
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli retrieve --peaks {input.peaks:q} --proposals {input.proposals:q} "
        "--manifest {input.manifest:q} --config {params.options:q} --shard {wildcards.shard} "
        "--num-shards {params.num_shards} --out {output.store:q} --panels {output.panels:q} "
        "--threads {threads} > {log:q} 2>&1"


rule gather_pseudo_masks:
    input:
        expand(f"{RUN}/pseudo_masks/shards/{{shard}}.h5", shard=SHARDS),
    output:
        f"{RUN}/pseudo_masks/pseudo_masks.h5",
    params:
        code=code_digest("gather_cli", "store"),
    log:
        f"{RUN}/logs/gather_pseudo_masks.log",
    benchmark:
        f"{RUN}/benchmarks/gather_pseudo_masks.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli gather --kind pseudo_masks --out {output:q} {input:q} > {log:q} 2>&1"
