# Stage `report` (tag2mask/report/), evaluation side: {RUN}/report.html, one self-contained
# HTML file of the run's figures, curves, timings and pictures. The rule passes its named
# inputs (`--input NAME=PATH`, the names `tag2mask report build --help` lists) and the run
# facts; the command works out from the facts why a part this run does not make is missing.

# The report's inputs: what this run makes (round_<kind>_<r> per self-training round).
REPORT_INPUTS = {
    "manifest": MANIFEST,
    "classifier_log": f"{RUN}/classifier/log.jsonl",
    "peaks": PEAKS_STORE,
    "pseudo_masks": PSEUDO_MASKS,
    "maskrcnn_log": f"{RUN}/maskrcnn/log.jsonl",
}
if PEAKS_TARGET.endswith("quality.json"):
    REPORT_INPUTS["peaks_quality"] = PEAKS_TARGET
if PSEUDO_MASKS_METHOD == "retrieval" and PROPOSALS_TARGET.endswith("quality.json"):
    REPORT_INPUTS["proposals_quality"] = PROPOSALS_TARGET
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

rule report:
    input:
        **REPORT_INPUTS,
    output:
        f"{RUN}/report.html",
    params:
        inputs=lambda w, input: [f"{name}={path}" for name, path in input.items()],
        options=options("report"),
        run_name=config["run_name"],
        eval_split=EVAL_SPLIT,
        ground_truth=HAS_GT,
        upper_bound=bool(config["upper_bound"]),
        val_split="val" in SPLITS,
        rounds=len(ROUNDS),
        shards=len(SHARDS),
        benchmarks=f"{RUN}/benchmarks",
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
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli report build --out {output:q} "
        "--input {params.inputs:q} --config {params.options:q} --run-name {params.run_name:q} "
        "--eval-split {params.eval_split} --ground-truth {params.ground_truth} "
        "--upper-bound {params.upper_bound} --val-split {params.val_split} "
        "--rounds {params.rounds} --shards {params.shards} --benchmarks {params.benchmarks:q} "
        "> {log:q} 2>&1"


REPORT_TARGET = f"{RUN}/report.html"
