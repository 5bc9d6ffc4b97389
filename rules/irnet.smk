# Stage `irnet` (tag2mask/irnet/): what IRNet's pseudo masks (Ahn et al. 2019; pseudo-mask
# method `irnet`) are made from, on the trained classifier and the train images' tags only
# (never ground truth):
#   compute_cams (sharded) -> gather {RUN}/cams/cams.h5: multi-scale + flip CAMs
#   label_relations -> {RUN}/irnet/relation_seeds.h5: confident fg / bg seeds (relation labels)
#   train_irnet -> {RUN}/irnet/irnet.pt: boundary + displacement branches (checkpoint every
#       epoch: irnet/last.pt, not an output, so a killed job resumes after its last epoch;
#       irnet.processes > 1: that many processes, torchrun, and GPUs, common.smk)
# The method's make action (pseudo_masks.smk) reads irnet.pt and cams.h5, which brings these
# rules into a run. Each rule passes the `irnet` keys the schema gives its action, so that
# changing, say, the random walk's beta reruns the pseudo masks and not the training.


rule compute_cams:
    input:
        manifest=MANIFEST,
        checkpoint=CLASSIFIER,
    output:
        shard_store(f"{RUN}/cams/shards/{{shard}}.h5"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        **action_params("irnet cams"),
        num_shards=len(SHARDS),
    threads: 2
    log:
        log_file("compute_cams/{shard}"),
    benchmark:
        benchmark_file("compute_cams/{shard}")
    conda:
        ENV
    resources:
        **job_resources(4000, 120, gpu=one_gpu("irnet")),
    shell:
        tag2mask("irnet cams --manifest {input.manifest:q} --checkpoint {input.checkpoint:q} "
                 "--config {params.options:q} --shard {wildcards.shard} "
                 "--num-shards {params.num_shards} --out {output:q} --threads {threads} "
                 "--no-progress")


rule label_relations:
    input:
        cams=f"{RUN}/cams/cams.h5",
        manifest=MANIFEST,
    output:
        f"{RUN}/irnet/relation_seeds.h5",
    params:
        **action_params("irnet relations"),
    log:
        log_file("label_relations"),
    benchmark:
        benchmark_file("label_relations")
    conda:
        ENV
    resources:
        **job_resources(2000, 30),
    shell:
        tag2mask("irnet relations --cams {input.cams:q} --manifest {input.manifest:q} "
                 "--config {params.options:q} --out {output:q} --no-progress")


rule train_irnet:
    input:
        manifest=MANIFEST,
        checkpoint=CLASSIFIER,
        seeds=f"{RUN}/irnet/relation_seeds.h5",
    output:
        model=f"{RUN}/irnet/irnet.pt",
        log=f"{RUN}/irnet/log.jsonl",
    params:
        **action_params("irnet train"),
        out_dir=lambda w, output: os.path.dirname(output.model),
    threads: 2
    log:
        log_file("train_irnet"),
    benchmark:
        benchmark_file("train_irnet")
    conda:
        ENV
    resources:
        **job_resources(8000, 12 * 60, gpu=training_gpus("irnet"),
                        processes=training_processes("irnet")),
    shell:
        tag2mask("irnet train --manifest {input.manifest:q} --checkpoint {input.checkpoint:q} "
                 "--seeds {input.seeds:q} --config {params.options:q} "
                 "--out-dir {params.out_dir:q} --threads {threads} "
                 "--processes {resources.processes} --no-progress")
