"""Wall time and peak memory of a full workflow run against the number of images.

    .venv/bin/python benchmarks/scale_run.py [N ...]      # default: 100 200 400 800

For each N, the whole workflow (`snakemake --cores 2`, default target) runs in a fresh temp
folder on a synthetic dataset of N train images and no val split (so every per-image stage,
Mask R-CNN's predictions and their evaluation included, works on the same N images), with a
small but real config (CONFIG below: `tiny` backbones on 128 px images, the demo's size, a few
epochs, a fixed number of shards, so the number of jobs is the same for every N). At 64 px the
whole run took 21 s for 100 images and 59 s for 800: the per-image part of most commands was
a fraction of a second at N=100, below the jitter of their fixed part, and their fits meant
nothing; 128 px quadruples the per-image work of the per-pixel stages.

Time: wall-clock time, and the CPU time of Snakemake and all its jobs (getrusage of the
process tree: on a machine shared with other work it varies much less than wall time). A run
costs a + b*N: a fixed part (per job: interpreter start, imports, model building,
Snakemake's DAG) and b per image. a and b are fitted to the runs (least squares); for each run
`proportionality_error` = (t - a) / (b*N) - 1 says how far its variable part is from b*N. Goal:
every |error| <= 10%. The same fit is made per stage from the benchmark TSVs' seconds and CPU
seconds.

Memory: the `max_rss` column (MB) of the per-job `benchmark:` TSV files Snakemake writes (the
job's process tree, sampled every 0.5 s for the first 15 s, then every 30 s), per stage the max
over its jobs, and, because sampling can miss a short peak (gathers last a second or two),
each job's exact peak RSS (the kernel's high-water mark, getrusage) and CPU
seconds, recorded by a `sitecustomize.py` put on PYTHONPATH for these runs only (the TSVs'
cpu_time misses the CPU used after a job's last sample). Goal: flat, i.e. no command's exact
peak grows by more than 10% (or MEMORY_SLACK_MB, whichever is larger) from the smallest to the
largest N.

Prints JSON: per N the wall and CPU time, seconds per image, per stage seconds and peak RSS,
the fits and the verdicts; then a line naming the worst commands and those left out of the
time figure, and last

    scale: worst_time_error=X worst_rss_growth=Y

X: the largest |proportionality_error| of a command's exact CPU seconds, over the commands
whose fitted variable part at the smallest N (b*N) is at least TIME_NOISE_FLOOR_S (1 s): below
it the jitter of the fixed part (hundredths of a second, and for the small JSON writers a
tenth) is tens of per cent of the variable part (the gathers' is 0.01 s per 100 images); those are named, and their fits are in the JSON. Y: the
largest (peak RSS at the largest N - at the smallest N) / peak at the smallest N over
commands (exact peaks), counted as 0 when the growth is at most MEMORY_SLACK_MB. Goal:
X <= 0.10, Y <= 0.10.
Some commands' memory is O(N) by nature (docs/performance.md, "Whole-pipeline scaling"):
COCO evaluation holds every ground-truth and predicted instance of the evaluated set. `--set-threads rule=n ...` is passed to Snakemake (on a loaded
2-core machine, extract_peaks=1 train_classifier=1 run several times faster than 2 threads).
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RUN = "results/scale"
TIME_TOLERANCE = 0.10
MEMORY_TOLERANCE = 0.10
MEMORY_SLACK_MB = 20  # growth below this is noise (allocator, import caches), whatever N
# A command whose variable CPU time at the smallest N (b*N from its fit) is below this is left
# out of worst_time_error: its variable part is then a fraction of a second, and the jitter
# of its fixed part (interpreter start, imports, file opening) is tens of per cent of it (a
# gather's variable part is 0.01 s for 100 images). Its fit is still in the JSON.
TIME_NOISE_FLOOR_S = 1.0

CONFIG = {
    "run_name": "scale",
    "shards": 2,
    "dataset": {"kind": "synthetic",
                "synthetic": {"seed": 0, "train_images": 100, "val_images": 0,
                              "image_size": 128}},
    # config/config.yaml's classifier settings are for its pretrained efficientnet_lite0; with
    # them (frozen BatchNorm, Adam 2e-4) the from-scratch tiny CNN collapses to constant class
    # maps whose response maps are all zero at N=800, and then no image gets a pseudo mask, so
    # the later stages do no work: the schema's defaults for training from scratch instead.
    "classifier": {"backbone": "tiny", "pretrained": False, "freeze_bn": False, "stride": 8,
                   "optimizer": "sgd", "lr": 0.01, "input_size": 128, "epochs": 2,
                   "batch_size": 8, "num_workers": 0},
    # At most 3 peaks per image (the from-scratch classifier finds 3.9 per image at N=100 and
    # 8.3 at N=800, having taken 8 times the SGD steps; peak extraction backpropagates each
    # peak and retrieval matches each against the proposals): a work per image that does not
    # follow the classifier's quality, as for Mask R-CNN below.
    "peaks": {"panels": 1, "map_size": 32, "max_peaks": 3},
    "proposals": {"max_proposals": 100, "builtin": {"working_size": 128}},
    "retrieval": {"panel_images": 1},
    # A fixed work per image for Mask R-CNN: trained on every image (images without a pseudo
    # mask as background-only ones) and, at prediction, up to 20 detections per image whatever
    # their score. With the defaults (skip images without a confident pseudo mask; keep
    # detections scoring 0.05 or more) its work follows the classifier's quality, which
    # improves with N (more SGD steps): 6, 15, 31 and 307 training images for N = 100, 200,
    # 400, 800, and the fits measured that, not the code.
    "maskrcnn": {"backbone": "tiny", "epochs": 1, "batch_size": 4, "min_size": [128],
                 "max_size": 128, "num_workers": 0, "warmup_iters": 2,
                 "empty_images": "negative", "min_score": 0.0, "score_threshold": 0.0,
                 "box_detections_per_img": 20},
    "upper_bound": False,
    "report": {"panel_images": 1},
}

# Runs at the start of every Python process of a benchmarked run; in `tag2mask` stage commands
# it records, at exit, the process's peak RSS (kernel high-water mark) and its command line.
RSS_HOOK = '''\
import os

_out = os.environ.get("SCALE_RUN_RSS_DIR")
_argv = open("/proc/self/cmdline", "rb").read().decode(errors="replace").split("\\0")[:-1]
if _out and "tag2mask.cli" in _argv:
    import atexit
    import json
    import resource

    @atexit.register
    def _record():
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        with open(os.path.join(_out, f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": _argv, "max_rss_kb": own.ru_maxrss,
                       "children_max_rss_kb": children.ru_maxrss, "cpu_s": cpu}, f)
'''


def stage_of_command(argv):
    """A stage name for a recorded `tag2mask` command line: the subcommand and its output
    (shard numbers replaced by *), e.g. 'peaks peaks/shards/*.h5'."""
    args = argv[argv.index("tag2mask.cli") + 1:]
    sub = args[0]
    out = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--out", "--out-dir")), "")
    out = re.sub(r"/\d+\.h5$", "/*.h5", out.removeprefix(f"{RUN}/"))
    return f"{sub} {out}".strip()


def run_workflow(n, args, work):
    config = {**CONFIG, "shards": args.shards}
    config["dataset"] = {**CONFIG["dataset"], "synthetic": {
        **CONFIG["dataset"]["synthetic"], "train_images": n, "val_images": args.val_images}}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    hook, rss_dir = work / "hook", work / "rss"
    hook.mkdir()
    rss_dir.mkdir()
    (hook / "sitecustomize.py").write_text(RSS_HOOK)
    env = {**os.environ, "SCALE_RUN_RSS_DIR": str(rss_dir),
           "PYTHONPATH": os.pathsep.join([str(hook), str(REPO / "workflow")])}
    cmd = ["timeout", "-k", "30", str(args.timeout), sys.executable, "-m", "snakemake",
           "-s", str(REPO / "Snakefile"), "-d", str(work / "run"),
           "--configfile", str(work / "config.yaml"), "--cores", str(args.cores)]
    if args.set_threads:
        cmd += ["--set-threads", *args.set_threads]
    log = work / "snakemake.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"N={n}: snakemake failed (exit {os.waitstatus_to_exitcode(status)}):\n"
                 f"{log.read_text()[-4000:]}")

    # benchmark TSVs: benchmarks/<rule>.tsv or benchmarks/<rule>/<shard>.tsv
    bench = work / "run" / RUN / "benchmarks"
    stages = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                                  "max_rss_mb": 0.0})
    for tsv in sorted(bench.rglob("*.tsv")):
        rule = tsv.parent.name if tsv.parent != bench else tsv.stem
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        s = stages[rule]
        s["jobs"] += 1
        s["seconds"] += float(row["s"])
        s["cpu_seconds"] += float(row["cpu_time"]) if row["cpu_time"] != "NA" else 0.0
        if row["max_rss"] != "NA":
            s["max_rss_mb"] = max(s["max_rss_mb"], float(row["max_rss"]))

    exact = defaultdict(lambda: {"jobs": 0, "cpu_seconds": 0.0, "max_rss_mb": 0.0})
    for record in rss_dir.glob("*.json"):
        r = json.loads(record.read_text())
        e = exact[stage_of_command(r["argv"])]
        e["jobs"] += 1
        e["cpu_seconds"] += r["cpu_s"]
        rss_mb = max(r["max_rss_kb"], r["children_max_rss_kb"]) / 1024
        e["max_rss_mb"] = max(e["max_rss_mb"], rss_mb)

    # the work the later stages got: a degenerate classifier can leave them nothing to do
    with open(work / "run" / RUN / "maskrcnn/log.jsonl") as f:
        maskrcnn_images = json.loads(f.readline())["images"]
    with h5py.File(work / "run" / RUN / "pseudo_masks/pseudo_masks.h5") as f:
        instances = int(f.attrs["count_instances"])

    return {
        "wall_s": round(wall, 1),
        "wall_s_per_image": round(wall / n, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        # kernel high-water mark of the largest single process: Snakemake or any job
        "max_rss_any_process_mb": round(usage.ru_maxrss / 1024, 1),
        "stages": {k: {**v, "seconds": round(v["seconds"], 2),
                       "cpu_seconds": round(v["cpu_seconds"], 2),
                       "max_rss_mb": round(v["max_rss_mb"], 1)}
                   for k, v in sorted(stages.items())},
        "commands_exact": {k: {**v, "cpu_seconds": round(v["cpu_seconds"], 2),
                               "max_rss_mb": round(v["max_rss_mb"], 1)}
                           for k, v in sorted(exact.items())},
        "pseudo_mask_instances": instances,
        "maskrcnn_training_images": maskrcnn_images,
    }


def fit(ns, seconds):
    """Least-squares a + b*N, and per run how far its variable part t - a is from b*N."""
    b, a = np.polyfit(np.asarray(ns, float), np.asarray(seconds, float), 1)
    errors = [(t - a) / (b * n) - 1 if b > 0 else None for n, t in zip(ns, seconds)]
    return {"fixed_s": round(float(a), 2), "per_image_s": round(float(b), 4),
            "proportionality_error": [None if e is None else round(float(e), 3)
                                      for e in errors]}


def memory_growth(ns, runs, key):
    """Per stage: peak RSS at each N and whether it stays flat (smallest vs largest N)."""
    out = {}
    for stage in sorted({s for r in runs for s in r[key]}):
        peaks = [r[key].get(stage) for r in runs]
        peaks = [p["max_rss_mb"] if isinstance(p, dict) else p for p in peaks]
        first, last = peaks[0], peaks[-1]
        flat = None
        if first and last:
            flat = last - first <= max(MEMORY_TOLERANCE * first, MEMORY_SLACK_MB)
        out[stage] = {"max_rss_mb": dict(zip(map(str, ns), peaks)), "flat": flat}
    return out


def last_line(ns, per_command, exact):
    """The verdict figures over commands: (worst_time_error, its command, worst_rss_growth,
    its command, commands left out of the time figure).

    worst_time_error: the largest |proportionality_error| of a command's exact CPU seconds,
    over the commands whose variable part at the smallest N is at least TIME_NOISE_FLOOR_S.
    worst_rss_growth: the largest (peak at the largest N - peak at the smallest N) / peak at
    the smallest N of a command's exact peak RSS, counted as 0 when the growth is at most
    MEMORY_SLACK_MB (so a command is `flat` exactly when it is <= MEMORY_TOLERANCE)."""
    time_error, time_worst, excluded = 0.0, None, []
    for command, f in per_command.items():
        if f["per_image_s"] * ns[0] < TIME_NOISE_FLOOR_S:
            excluded.append(command)
            continue
        e = max(abs(x) if x is not None else float("inf") for x in f["proportionality_error"])
        if e > time_error or time_worst is None:
            time_error, time_worst = e, command
    growth, growth_worst = 0.0, None
    for command, v in exact.items():
        first, last = v["max_rss_mb"][str(ns[0])], v["max_rss_mb"][str(ns[-1])]
        if not first or last is None:
            continue
        g = (last - first) / first if last - first > MEMORY_SLACK_MB else 0.0
        if g > growth or growth_worst is None:
            growth, growth_worst = g, command
    return time_error, time_worst, growth, growth_worst, sorted(excluded)


def summarise(ns, runs):
    """Fits and verdicts over the runs (`runs[i]` made with `ns[i]` images)."""
    wall = fit(ns, [r["wall_s"] for r in runs])
    cpu = fit(ns, [r["cpu_s"] for r in runs])
    per_stage = {}
    for stage in sorted({s for r in runs for s in r["stages"]}):
        per_stage[stage] = {
            kind: fit(ns, [r["stages"].get(stage, {}).get(kind, 0.0) for r in runs])
            for kind in ("seconds", "cpu_seconds")}
    memory = memory_growth(ns, runs, "stages")
    exact = memory_growth(ns, runs, "commands_exact")
    per_command = {
        command: fit(ns, [r["commands_exact"].get(command, {}).get("cpu_seconds", 0.0)
                          for r in runs])
        for command in sorted({c for r in runs for c in r["commands_exact"]})}
    worst = lambda f: max((abs(e) for e in f["proportionality_error"] if e is not None),
                          default=None)
    within = lambda f: all(e is not None and abs(e) <= TIME_TOLERANCE
                           for e in f["proportionality_error"])
    # the verdict from the exact figures: a sub-second job's TSV holds one sample taken as
    # it starts (0 to a few MB), which looks like growth against a longer run's
    grown = sorted(s for s, v in exact.items() if v["flat"] is False)
    tsv_grown = sorted(s for s, v in memory.items() if v["flat"] is False)
    time_error, time_worst, growth, growth_worst, excluded = last_line(ns, per_command, exact)
    return {
        "wall_fit": wall,
        "cpu_fit": cpu,
        "stage_time_fit_tsv": per_stage,
        "command_cpu_fit_exact": per_command,
        "memory_per_stage_tsv": memory,
        "memory_per_command_exact": exact,
        "verdicts": {
            "wall_time_proportional_within_10pct": within(wall),
            "wall_max_proportionality_error": worst(wall),
            "cpu_time_proportional_within_10pct": within(cpu),
            "cpu_max_proportionality_error": worst(cpu),
            "memory_flat": not grown,
            "commands_whose_memory_grows": grown,
            "rules_whose_tsv_memory_grows": tsv_grown,
            "worst_time_error": round(time_error, 3),
            "worst_time_error_command": time_worst,
            "time_noise_floor_s": TIME_NOISE_FLOOR_S,
            "commands_below_time_noise_floor": excluded,
            # the same over every command, those below the floor included (for reference)
            "worst_time_error_all_commands": max(
                (worst(f) for f in per_command.values() if worst(f) is not None), default=None),
            "worst_rss_growth": round(growth, 3),
            "worst_rss_growth_command": growth_worst,
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[100, 200, 400, 800],
                        help="numbers of train images, one full run each")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=0,
                        help="a fixed val split (a fixed cost: it does not grow with N)")
    parser.add_argument("--set-threads", nargs="+", metavar="RULE=N",
                        help="passed to snakemake --set-threads")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--keep", type=Path, help="keep the run folders under this folder")
    args = parser.parse_args()
    ns = sorted(args.sizes)

    runs = []
    for n in ns:
        if args.keep:
            work = args.keep / f"n{n}"
            work.mkdir(parents=True, exist_ok=False)
            runs.append(run_workflow(n, args, work))
        else:
            with tempfile.TemporaryDirectory(prefix=f"scale-run-{n}-") as tmp:
                runs.append(run_workflow(n, args, Path(tmp)))
        print(f"N={n}: {runs[-1]['wall_s']} s", file=sys.stderr, flush=True)

    result = {"config": {**CONFIG, "shards": args.shards, "val_images": args.val_images,
                         "cores": args.cores, "set_threads": args.set_threads},
              "runs": dict(zip(map(str, ns), runs))}
    if len(ns) >= 2:
        result.update(summarise(ns, runs))
    print(json.dumps(result, indent=1))
    if len(ns) >= 2:
        v = result["verdicts"]
        print(f"scale: worst time error in {v['worst_time_error_command']}, worst memory "
              f"growth in {v['worst_rss_growth_command']}; left out of the time figure "
              f"(variable CPU part at N={ns[0]} below {TIME_NOISE_FLOOR_S} s): "
              f"{', '.join(v['commands_below_time_noise_floor']) or 'none'} (with them: "
              f"{v['worst_time_error_all_commands']})")
        print(f"scale: worst_time_error={v['worst_time_error']:.3f} "
              f"worst_rss_growth={v['worst_rss_growth']:.3f}")


if __name__ == "__main__":
    main()
