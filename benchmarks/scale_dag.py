"""Snakemake's own overhead at cluster scale: dry-run and no-op rerun time of the whole DAG
for a 10,000-image dataset cut into 100 shards.

The DAG's size depends on the shard count, not on the number of images (the manifest is read
by the stages, not by the Snakefile), so the outputs of every job are created as empty files and
stamped complete with `--touch`; then a dry run and a no-op rerun are timed.

    .venv/bin/python benchmarks/scale_dag.py [--shards 100] [--images 10000]

Prints JSON: seconds for the dry run of the fresh DAG, the touch, and the no-op rerun, the job
count, and each against the goal (< 30 s); last a line `scale_dag: images=.. shards=.. jobs=..
dry_run_s=.. noop_rerun_s=..`. COCO's size: --images 123287 --shards 500.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 30  # a COCO-sized DAG (118k images, 500 shards) dry-runs within this


def snakemake(workdir, config, *args):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump({
            "run_name": "scale", "shards": args.shards,
            "dataset": {"kind": "synthetic",
                        "synthetic": {"train_images": args.images * 4 // 5,
                                      "val_images": args.images // 5}},
            "self_training": {"rounds": 1}}))
        dry, out = snakemake(work, config, "-n", "--quiet", "rules")
        jobs = int(re.search(r"^total\s+(\d+)", out, re.M).group(1))
        _, listing = snakemake(work, config, "-n", "--forceall")
        outputs = set()
        for line in re.findall(r"^\s+output: (.*)$", listing, re.M):
            outputs.update(p.strip() for p in line.split(","))
        for name in outputs:
            path = work / name
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:  # directory() outputs (picture panels)
                path.mkdir(parents=True, exist_ok=True)
        touch, _ = snakemake(work, config, "--touch")
        noop, out = snakemake(work, config, "-n")
        assert "Nothing to be done" in out, out[-2000:]
    print(json.dumps({
        "images": args.images, "shards": args.shards, "jobs": jobs,
        "dry_run_s": round(dry, 2), "touch_s": round(touch, 2), "noop_rerun_s": round(noop, 2),
        "goal_s": GOAL_S, "dry_run_within_goal": dry < GOAL_S,
        "noop_within_goal": noop < GOAL_S}, indent=1))
    print(f"scale_dag: images={args.images} shards={args.shards} jobs={jobs} "
          f"dry_run_s={dry:.2f} noop_rerun_s={noop:.2f}")


if __name__ == "__main__":
    main()
