# Stage `proposals` (tag2mask/proposals/): mask proposals per image, sharded like
# the peaks, then gathered (rule gather, common.smk). Built-in selective-search style grouping
# (CPU), imported from proposals.external.json, or Segment Anything's (proposals.sam).
# Quality against ground truth (ABO, recall) only for datasets with GT. Part of a run only when its pseudo-mask method reads the proposals.

PROPOSALS = config["proposals"]


rule propose:
    input:
        manifest=MANIFEST,
        # a new external file reruns the stage; with none set, the command says so
        external=[PROPOSALS["external"]["json"]] if PROPOSALS["external"]["json"] else [],
    output:
        shard_store(f"{RUN}/proposals/shards/{{shard}}.h5"),
    wildcard_constraints:
        shard=r"\d+",
    priority: 90  # beside the classifier, so that they wait for nothing later
    params:
        **action_params("proposals make"),
        num_shards=len(SHARDS),
    log:
        log_file("propose/{shard}"),
    benchmark:
        benchmark_file("propose/{shard}")
    conda:
        ENV
    resources:
        # one GPU where the selected generator runs on cuda (proposals.sam.device)
        **job_resources(4000, 120, gpu=int(PROPOSALS.get(PROPOSALS["method"], {}).get("device")
                                           == "cuda")),
    shell:
        tag2mask("proposals make --manifest {input.manifest:q} --config {params.options:q} "
                 "--shard {wildcards.shard} --num-shards {params.num_shards} --out {output:q}")


# GT of the splits that have proposals (pseudo masks are made for train images)
PROPOSAL_GT_SPLITS = [s for s in PROPOSALS["splits"] if s in GT_SPLITS]


if PROPOSAL_GT_SPLITS:

    rule evaluate_proposals:
        input:
            proposals=PROPOSALS_STORE,
            gt=expand(f"{DATA}/gt/{{split}}.json", split=PROPOSAL_GT_SPLITS),
        output:
            f"{RUN}/proposals/quality.json",
        params:
            gt=lambda w, input: [f"{s}={p}" for s, p in zip(PROPOSAL_GT_SPLITS, input.gt)],
            code=code_digest("proposals.cli:run_evaluate"),
        log:
            log_file("evaluate_proposals"),
        benchmark:
            benchmark_file("evaluate_proposals")
        conda:
            ENV
        resources:
            **job_resources(4000, 30),
        shell:
            tag2mask("proposals evaluate --proposals {input.proposals:q} --gt {params.gt:q} "
                     "--out {output:q}")


# the proposals' quality file, where the run makes proposals and has their GT
PROPOSALS_REPORT_INPUTS = (
    {"proposals_quality": f"{RUN}/proposals/quality.json"}
    if PROPOSALS_STORE in PSEUDO_MASK_INPUTS.values() and PROPOSAL_GT_SPLITS else {}
)
PROPOSALS_TARGETS = list(PROPOSALS_REPORT_INPUTS.values())
