# Stage `proposals` (tag2mask/proposals/): mask proposals per image (CPU only), sharded like
# the peaks, then gathered (rule gather, common.smk). Built-in selective-search style grouping,
# or imported from proposals.external_json. Quality against ground truth (ABO, recall) only
# for datasets with GT.

PROPOSALS = config["proposals"]
# the external file is an input (a new file reruns the stage); with no path set, the
# command itself stops with a clear error
_EXTERNAL = (
    [PROPOSALS["external_json"]]
    if PROPOSALS["method"] == "external" and PROPOSALS["external_json"]
    else []
)


rule propose:
    input:
        manifest=MANIFEST,
        external=_EXTERNAL,
    output:
        f"{RUN}/proposals/shards/{{shard}}.h5",
    wildcard_constraints:
        shard=r"\d+",
    params:
        options=options("proposals"),
        num_shards=len(SHARDS),
        code=code("proposals.cli:run_make"),
    log:
        f"{RUN}/logs/propose/{{shard}}.log",
    benchmark:
        f"{RUN}/benchmarks/propose/{{shard}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli proposals make --manifest {input.manifest:q} "
        "--config {params.options:q} --shard {wildcards.shard} --num-shards {params.num_shards} "
        "--out {output:q} > {log:q} 2>&1"


# GT of the splits that have proposals (pseudo masks are made for train images)
PROPOSAL_GT_SPLITS = [s for s in PROPOSALS["splits"] if s in GT_SPLITS]

if HAS_GT and PROPOSAL_GT_SPLITS:

    rule evaluate_proposals:
        input:
            proposals=PROPOSALS_STORE,
            gt=expand(f"{DATA}/gt/{{split}}.json", split=PROPOSAL_GT_SPLITS),
        output:
            f"{RUN}/proposals/quality.json",
        params:
            gt=lambda w, input: [f"{s}={p}" for s, p in zip(PROPOSAL_GT_SPLITS, input.gt)],
            code=code("proposals.cli:run_evaluate"),
        log:
            f"{RUN}/logs/evaluate_proposals.log",
        benchmark:
            f"{RUN}/benchmarks/evaluate_proposals.tsv"
        conda:
            "../envs/tag2mask.yaml"
        resources:
            mem_mb=lambda wc, attempt: 4000 * attempt,
            runtime=lambda wc, attempt: 30 * attempt,
        shell:
            "\"$TAG2MASK_PYTHON\" -m tag2mask.cli proposals evaluate "
            "--proposals {input.proposals:q} --gt {params.gt:q} --out {output:q} > {log:q} 2>&1"


# what `rule all` asks of this stage
PROPOSALS_TARGET = (
    f"{RUN}/proposals/quality.json" if HAS_GT and PROPOSAL_GT_SPLITS else PROPOSALS_STORE
)
