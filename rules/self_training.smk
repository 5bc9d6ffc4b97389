# Self-training rounds 1..R (config self_training.rounds; 0 = none). Round r takes the model of
# round r-1 (round 0 = {RUN}/maskrcnn), its predictions on the TRAINING images (predict --split
# train; never ground truth), the peaks and round r-1's pseudo masks, and merges them into
# round r's pseudo masks (tag2mask.self_training documents the rule); Mask R-CNN is then
# retrained from scratch on them with the same schedule and predicted/evaluated like round 0:
# {RUN}/self_training/round_<r>/{pseudo_masks.h5, model.pt, log.jsonl, predictions_<split>.json,
# evaluation_<split>.json (rules/report.smk)}.

SELF_TRAINING = config["self_training"]
ROUNDS = list(range(1, SELF_TRAINING["rounds"] + 1))
ST = f"{RUN}/self_training"
PEAKS_STORE = f"{RUN}/peaks/peaks.h5"


# folder of round r's model and predictions, and round r's pseudo-mask store (round 0: the
# Mask R-CNN stage's folder and retrieval's store)
round_dir = lambda r: f"{RUN}/maskrcnn" if int(r) == 0 else f"{ST}/round_{r}"
round_store = lambda r: (
    f"{RUN}/pseudo_masks/pseudo_masks.h5" if int(r) == 0 else f"{ST}/round_{r}/pseudo_masks.h5"
)


wildcard_constraints:
    round=r"[1-9][0-9]*",


rule self_training_masks:
    input:
        predictions=lambda w: f"{round_dir(int(w.round) - 1)}/predictions_train.json",
        previous=lambda w: round_store(int(w.round) - 1),
        peaks=PEAKS_STORE,
        manifest=f"{DATA}/manifest.json",
    output:
        f"{ST}/round_{{round}}/pseudo_masks.h5",
    params:
        options=options("self_training"),
        code=code_digest("self_training", "store", "masks", "manifest"),
    log:
        f"{RUN}/logs/self_training_masks_{{round}}.log",
    benchmark:
        f"{RUN}/benchmarks/self_training_masks_{{round}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli self-train-masks --predictions {input.predictions:q} "
        "--peaks {input.peaks:q} --previous {input.previous:q} --manifest {input.manifest:q} "
        "--config {params.options:q} --out {output:q} > {log:q} 2>&1"


rule train_self_training:
    input:
        store=f"{ST}/round_{{round}}/pseudo_masks.h5",
        manifest=f"{DATA}/manifest.json",
    output:
        model=f"{ST}/round_{{round}}/model.pt",
        log=f"{ST}/round_{{round}}/log.jsonl",
    params:
        options=options("maskrcnn"),
        out_dir=lambda w, output: os.path.dirname(output.model),
        code=code_digest("train_maskrcnn", *_MASKRCNN_CODE),
    log:
        f"{RUN}/logs/train_self_training_{{round}}.log",
    benchmark:
        f"{RUN}/benchmarks/train_self_training_{{round}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    threads: 4
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 24 * 60 * attempt,
        gpu=int(MASKRCNN["device"] == "cuda"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli train-maskrcnn --store {input.store:q} --manifest {input.manifest:q} "
        "--out-dir {params.out_dir:q} --config {params.options:q} --threads {threads} "
        "--no-progress > {log:q} 2>&1"


rule predict_self_training:
    input:
        model=f"{ST}/round_{{round}}/model.pt",
        manifest=f"{DATA}/manifest.json",
    output:
        f"{ST}/round_{{round}}/predictions_{{split}}.json",
    wildcard_constraints:
        split="train|val",
    params:
        options=options("maskrcnn"),
        code=code_digest("predict", *_MASKRCNN_CODE),
    log:
        f"{RUN}/logs/predict_self_training_{{round}}_{{split}}.log",
    benchmark:
        f"{RUN}/benchmarks/predict_self_training_{{round}}_{{split}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    threads: 4
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=int(MASKRCNN["device"] == "cuda"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli predict --checkpoint {input.model:q} --manifest {input.manifest:q} "
        "--split {wildcards.split} --out {output:q} --config {params.options:q} "
        "--threads {threads} --no-progress > {log:q} 2>&1"
