# Stage `maskrcnn` (tag2mask/maskrcnn/): Mask R-CNN trained on a pseudo-mask store, and its
# predictions (COCO results JSON). One rule each for every model of a run, named by the
# wildcard {model}, the model's folder under {RUN}:
#   maskrcnn                 trained on the pseudo masks (the weakly supervised model)
#   upper_bound              trained on ground-truth masks (upper_bound.smk, evaluation side)
#   self_training/round_<r>  trained on self-training round r's pseudo masks
# Which store each model trains on: the Snakefile's training_stores(), which joins what the
# rule files say (maskrcnn_training_stores() here). Each folder holds model.pt, log.jsonl,
# checkpoints/ and predictions_<split>.json. The checkpoints are not rule outputs, so Snakemake
# keeps them when a killed job is rerun (--rerun-incomplete) and training resumes after the
# last epoch. maskrcnn.processes > 1: that many processes (torchrun) and GPUs (common.smk).

import re


rule train_maskrcnn:
    input:
        store=lambda w: training_stores()[w.model],
        manifest=MANIFEST,
    output:
        model=f"{RUN}/{{model}}/model.pt",
        log=f"{RUN}/{{model}}/log.jsonl",
    wildcard_constraints:
        model=MODELS,
    params:
        **action_params("maskrcnn train"),
        out_dir=lambda w, output: os.path.dirname(output.model),
    log:
        log_file("train_maskrcnn/{model}"),
    benchmark:
        benchmark_file("train_maskrcnn/{model}")
    conda:
        ENV
    # One torch thread by default: on a CPU shared with other jobs (or with the DataLoader
    # workers), more intra-op threads made training several times slower here. A dedicated
    # CPU node can raise it: snakemake --set-threads train_maskrcnn=8.
    threads: 1
    resources:
        **job_resources(16000, 24 * 60, gpu=training_gpus("maskrcnn"),
                        processes=training_processes("maskrcnn")),
    shell:
        tag2mask("maskrcnn train --store {input.store:q} --manifest {input.manifest:q} "
                 "--out-dir {params.out_dir:q} --config {params.options:q} --threads {threads} "
                 "--processes {resources.processes} --no-progress")


rule predict:
    input:
        model=f"{RUN}/{{model}}/model.pt",
        manifest=MANIFEST,
    output:
        f"{RUN}/{{model}}/predictions_{{split}}.json",
    wildcard_constraints:
        model=MODELS,
        split="train|val",
    params:
        **action_params("maskrcnn predict"),
    log:
        log_file("predict/{model}_{split}"),
    benchmark:
        benchmark_file("predict/{model}_{split}")
    conda:
        ENV
    threads: 1  # as train_maskrcnn; --set-threads predict=N to change
    resources:
        **job_resources(8000, 120, gpu=one_gpu("maskrcnn")),
    shell:
        tag2mask("maskrcnn predict --checkpoint {input.model:q} --manifest {input.manifest:q} "
                 "--split {wildcards.split} --out {output:q} --config {params.options:q} "
                 "--threads {threads} --no-progress")


# Masks for new images (config key predict_images, e.g. --config predict_images=DIR): the
# run's trained Mask R-CNN on every image in DIR (and its sub-folders with
# maskrcnn.images_recursive), written to {RUN}/predict/<DIR's name>/ as predictions.json (COCO
# results scoring maskrcnn.images_score_threshold; `predictions.json.images.json` maps the
# image ids to file names) and overlays/ (one PNG per image). Unreadable images are logged and
# skipped.
PREDICT_FOLDERS = {}  # folder name -> the folder
if config["predict_images"]:
    _folder = os.path.normpath(os.path.expanduser(str(config["predict_images"])))
    PREDICT_FOLDERS[os.path.basename(os.path.abspath(_folder))] = _folder


rule predict_images:
    input:
        model=f"{RUN}/maskrcnn/model.pt",
        images=lambda w: PREDICT_FOLDERS[w.folder],
    output:
        predictions=f"{RUN}/predict/{{folder}}/predictions.json",
        images=f"{RUN}/predict/{{folder}}/predictions.json.images.json",
        overlays=directory(f"{RUN}/predict/{{folder}}/overlays"),
    wildcard_constraints:
        folder="|".join(map(re.escape, PREDICT_FOLDERS)) or "(?!)",
    params:
        **action_params("maskrcnn predict-images"),
    log:
        log_file("predict_images/{folder}"),
    benchmark:
        benchmark_file("predict_images/{folder}")
    conda:
        ENV
    threads: 1  # as predict
    resources:
        **job_resources(8000, 120, gpu=one_gpu("maskrcnn")),
    shell:
        tag2mask("maskrcnn predict-images --checkpoint {input.model:q} --images {input.images:q} "
                 "--out {output.predictions:q} --overlays {output.overlays:q} "
                 "--config {params.options:q} --threads {threads} --no-progress")


MASKRCNN_TRAINING_STORES = {"maskrcnn": PSEUDO_MASKS}
MASKRCNN_TARGETS = [f"{RUN}/maskrcnn/predictions_{EVAL_SPLIT}.json",
                    *(f"{RUN}/predict/{name}/predictions.json" for name in PREDICT_FOLDERS)]
MASKRCNN_REPORT_INPUTS = {
    "maskrcnn_log": f"{RUN}/maskrcnn/log.jsonl",
    **({"predictions_val": f"{RUN}/maskrcnn/predictions_val.json"} if "val" in SPLITS else {}),
    **({"maskrcnn_train_eval": f"{RUN}/maskrcnn/evaluation_train.json"} if HAS_GT else {}),
    **({"maskrcnn_eval": f"{RUN}/maskrcnn/evaluation_val.json"}
       if HAS_GT and "val" in SPLITS else {}),
}
