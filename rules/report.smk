# Stage `report` (tag2mask/report/), evaluation side: {RUN}/report.html, one self-contained
# HTML file of the run's figures, curves, timings and pictures.

import re
import shlex

_NO_GT = "the dataset (kind 'tags') has no ground truth"

# The report's inputs, named after `tag2mask report` options (round_<kind>_<r> per round).
REPORT_INPUTS = {
    "manifest": MANIFEST,
    "peaks": PEAKS_STORE,
    "pseudo_masks": PSEUDO_MASKS,
    "maskrcnn_log": f"{RUN}/maskrcnn/log.jsonl",
}
if "val" in SPLITS:
    REPORT_INPUTS["predictions_val"] = f"{RUN}/maskrcnn/predictions_val.json"
if HAS_GT:
    REPORT_INPUTS["pseudo_eval"] = f"{RUN}/pseudo_masks/evaluation.json"
    REPORT_INPUTS["maskrcnn_train_eval"] = f"{RUN}/maskrcnn/evaluation_train.json"
    if "val" in SPLITS:
        REPORT_INPUTS["maskrcnn_eval"] = f"{RUN}/maskrcnn/evaluation_val.json"
    REPORT_INPUTS.update({f"gt_{s}": f"{DATA}/gt/{s}.json" for s in GT_SPLITS})
if UPPER_BOUND:
    REPORT_INPUTS["upper_bound_eval"] = f"{UB}/evaluation_{EVAL_SPLIT}.json"
    REPORT_INPUTS["upper_bound_log"] = f"{UB}/log.jsonl"
for _r in ROUNDS:
    REPORT_INPUTS[f"round_store_{_r}"] = f"{ST}/round_{_r}/pseudo_masks.h5"
    REPORT_INPUTS[f"round_log_{_r}"] = f"{ST}/round_{_r}/log.jsonl"
    if HAS_GT:
        REPORT_INPUTS[f"round_eval_{_r}"] = f"{ST}/round_{_r}/evaluation_{EVAL_SPLIT}.json"

# ... as command-line options (shell-quoted)
_args = []
for _name, _path in REPORT_INPUTS.items():
    _m = re.fullmatch(r"round_(eval|log|store)_(\d+)", _name)
    if _m:
        _args += [f"--round-{_m.group(1)}", f"{_m.group(2)}={_path}"]
    elif _name != "manifest":
        _args += [f"--{_name.replace('_', '-')}", _path]

# why the parts this run does not make are missing
_why = {}
if not HAS_GT:
    for _part in ("pseudo-eval", "maskrcnn-train-eval", "maskrcnn-eval", "upper-bound-eval",
                  "round-eval", "gt-train", "gt-val"):
        _why[_part] = _NO_GT
elif not config["upper_bound"]:
    _why["upper-bound-eval"] = _why["upper-bound-log"] = "upper_bound is false in the config"
if "val" not in SPLITS:
    for _part in ("predictions-val", "maskrcnn-eval", "gt-val"):
        _why.setdefault(_part, "the dataset has no val split")
if not ROUNDS:
    _why.setdefault("round-eval", "self_training.rounds is 0 in the config")
_args += [f"--missing={k}={v}" for k, v in sorted(_why.items())]
REPORT_ARGS = " ".join(shlex.quote(a) for a in _args)


rule report:
    input:
        **REPORT_INPUTS,
    output:
        f"{RUN}/report.html",
    params:
        options=options("report"),
        args=REPORT_ARGS,
        run_name=config["run_name"],
        eval_split=EVAL_SPLIT,
        classifier_log=f"{RUN}/classifier/log.jsonl",
        benchmarks=f"{RUN}/benchmarks",
        shards=len(SHARDS),
        code=code("report.cli:run_build"),
    log:
        f"{RUN}/logs/report.log",
    benchmark:
        f"{RUN}/benchmarks/report.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli report build --manifest {input.manifest:q} --out {output:q} "
        "--config {params.options:q} --run-name {params.run_name:q} "
        "--eval-split {params.eval_split} --classifier-log {params.classifier_log:q} "
        "--benchmarks {params.benchmarks:q} --shards {params.shards} {params.args} > {log:q} 2>&1"


REPORT_TARGET = f"{RUN}/report.html"
