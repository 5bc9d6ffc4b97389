# Stage `maskrcnn` (tag2mask/maskrcnn/): Mask R-CNN trained on a pseudo-mask store, and its
# predictions (COCO results JSON). One rule each for every model of a run, named by the
# wildcard {model}, the model's folder under {RUN}:
#   maskrcnn                 trained on retrieval's pseudo masks (the weakly supervised model)
#   upper_bound              trained on ground-truth masks (upper_bound.smk, evaluation side)
#   self_training/round_<r>  trained on self-training round r's pseudo masks
# Each folder holds model.pt, log.jsonl, checkpoints/ and predictions_<split>.json. The
# checkpoints are not rule outputs, so Snakemake keeps them when a killed job is rerun
# (--rerun-incomplete) and training resumes after the last epoch. maskrcnn.processes > 1:
# training on that many processes (torchrun) and GPUs (common.smk).

MASKRCNN = config["maskrcnn"]

# model folder -> the store it trains on; upper_bound.smk and self_training.smk add theirs
TRAINING_STORES = {"maskrcnn": PSEUDO_MASKS}


wildcard_constraints:
    model=r"maskrcnn|upper_bound|self_training/round_[1-9][0-9]*",
    split="train|val",


rule train_maskrcnn:
    input:
        store=lambda w: TRAINING_STORES[w.model],
        manifest=MANIFEST,
    output:
        model=f"{RUN}/{{model}}/model.pt",
        log=f"{RUN}/{{model}}/log.jsonl",
    params:
        options=options("maskrcnn"),
        out_dir=lambda w, output: os.path.dirname(output.model),
        code=code("maskrcnn.cli:run_train"),
    log:
        f"{RUN}/logs/train_maskrcnn/{{model}}.log",
    benchmark:
        f"{RUN}/benchmarks/train_maskrcnn/{{model}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    # One torch thread by default: on a CPU shared with other jobs (or with the DataLoader
    # workers), more intra-op threads made training several times slower here. A dedicated
    # CPU node can raise it: snakemake --set-threads train_maskrcnn=8.
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 24 * 60 * attempt,
        gpu=training_gpus("maskrcnn"),
        processes=training_processes("maskrcnn"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli maskrcnn train --store {input.store:q} "
        "--manifest {input.manifest:q} --out-dir {params.out_dir:q} --config {params.options:q} "
        "--threads {threads} --processes {resources.processes} --no-progress > {log:q} 2>&1"


rule predict:
    input:
        model=f"{RUN}/{{model}}/model.pt",
        manifest=MANIFEST,
    output:
        f"{RUN}/{{model}}/predictions_{{split}}.json",
    params:
        options=options("maskrcnn"),
        code=code("maskrcnn.cli:run_predict"),
    log:
        f"{RUN}/logs/predict/{{model}}_{{split}}.log",
    benchmark:
        f"{RUN}/benchmarks/predict/{{model}}_{{split}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    threads: 1  # as train_maskrcnn; --set-threads predict=N to change
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=int(MASKRCNN["device"] == "cuda"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli maskrcnn predict --checkpoint {input.model:q} "
        "--manifest {input.manifest:q} --split {wildcards.split} --out {output:q} "
        "--config {params.options:q} --threads {threads} --no-progress > {log:q} 2>&1"


# what `rule all` asks of this stage
MASKRCNN_TARGET = f"{RUN}/maskrcnn/predictions_{EVAL_SPLIT}.json"


# Masks for new images (config key predict_images, e.g. --config predict_images=DIR): the
# run's trained Mask R-CNN on every image in DIR, written to {RUN}/predict/<DIR's name>/ as
# predictions.json (COCO results, `predictions.json.images.json` maps the image ids to file
# names) and overlays/ (one PNG per image). Unreadable images are logged and skipped.
import re

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
        options=options("maskrcnn"),
        code=code("maskrcnn.cli:run_predict"),
    log:
        f"{RUN}/logs/predict_images/{{folder}}.log",
    benchmark:
        f"{RUN}/benchmarks/predict_images/{{folder}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    threads: 1  # as predict
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=int(MASKRCNN["device"] == "cuda"),
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli maskrcnn predict --checkpoint {input.model:q} "
        "--images {input.images:q} --out {output.predictions:q} --overlays {output.overlays:q} "
        "--config {params.options:q} --threads {threads} --no-progress > {log:q} 2>&1"


# what `rule all` asks of it: nothing unless predict_images is set
PREDICT_TARGET = [f"{RUN}/predict/{name}/predictions.json" for name in PREDICT_FOLDERS]
