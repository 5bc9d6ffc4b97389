# Stage `report` (tag2mask/report/), evaluation side: {RUN}/report.html, one self-contained
# HTML file of the run's figures, curves, timings and pictures. Its inputs are what the rule
# files say the run makes for it (common.smk's report_inputs(): `--input NAME=PATH`, the
# names `tag2mask report build --help` lists); the run facts let the command say why a part
# this run does not make is missing.

REPORT = f"{RUN}/report.html"


rule report:
    input:
        unpack(lambda w: report_inputs()),
    output:
        REPORT,
    params:
        **action_params("report build"),
        inputs=lambda w, input: [f"{name}={path}" for name, path in input.items()],
        run_name=config["run_name"],
        eval_split=EVAL_SPLIT,
        ground_truth=HAS_GT,
        upper_bound=bool(config["upper_bound"]),
        val_split="val" in SPLITS,
        rounds=len(ROUNDS),
        shards=len(SHARDS),
        benchmarks=f"{RUN}/benchmarks",
    log:
        log_file("report"),
    benchmark:
        benchmark_file("report")
    conda:
        ENV
    resources:
        **job_resources(4000, 30),
    shell:
        tag2mask("report build --out {output:q} --input {params.inputs:q} "
                 "--config {params.options:q} --run-name {params.run_name:q} "
                 "--eval-split {params.eval_split} --ground-truth {params.ground_truth} "
                 "--upper-bound {params.upper_bound} --val-split {params.val_split} "
                 "--rounds {params.rounds} --shards {params.shards} "
                 "--benchmarks {params.benchmarks:q}")

REPORT_TARGETS = [REPORT]
