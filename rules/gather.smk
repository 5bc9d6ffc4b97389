# The one gather rule of the sharded stages (peaks, proposals, IRNet's CAMs, pseudo masks):
# each writes <folder>/shards/<i>.h5, and one job joins them into <folder>/<folder>.h5 with
# `tag2mask <stage> gather` (core/cli_args.py), which checks that the shards agree.

# folder -> stage
GATHERED = {"peaks": "peaks", "proposals": "proposals", "cams": "irnet",
            "pseudo_masks": "pseudo_masks"}


rule gather:
    input:
        lambda w: expand(f"{RUN}/{w.folder}/shards/{{shard}}.h5", shard=SHARDS),
    output:
        f"{RUN}/{{folder}}/{{folder}}.h5",
    wildcard_constraints:
        folder="|".join(GATHERED),
    params:
        stage=lambda w: GATHERED[w.folder],
        code=code_digest("core.cli_args:_gather"),
    log:
        log_file("gather_{folder}"),
    benchmark:
        benchmark_file("gather_{folder}")
    conda:
        ENV
    resources:
        **job_resources(2000, 30),
    shell:
        tag2mask("{params.stage} gather --out {output:q} {input:q}")
