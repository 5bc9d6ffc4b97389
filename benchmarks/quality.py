"""Quality of the whole workflow, through the workflow: the demo on synthetic seeds 0 and 1,
and voc-mini with config/voc.yaml, each with retrieval (the default) and with IRNet.

    .venv/bin/python benchmarks/quality.py              # read the finished runs, print
    .venv/bin/python benchmarks/quality.py --run        # run what is missing, then print
    .venv/bin/python benchmarks/quality.py --run --only demo0 voc-mini

Each run is the README's `snakemake --cores 2` with `--configfile <base config> <overrides>` in
this checkout (no other flag unless --set-threads is given), with its own run_name
(results/quality-<name>/), so the figures come from the workflow's own evaluation
files, never from a hand-run script:
- demo0, demo1: config/config.yaml with dataset.synthetic.seed 0 / 1 (nothing else changed),
  the whole workflow (Mask R-CNN on val and the upper bound);
- voc-mini: config/voc.yaml (needs ../shared/data/voc-mini or TAG2MASK_VOC_MINI), up to the
  pseudo masks, as the quality goals ask;
- demo0-irnet, demo1-irnet, voc-mini-irnet: the same with pseudo_masks.method irnet.
With --run, the wall time of each snakemake invocation is recorded in
results/quality-<name>/quality_wall.json (a run found finished keeps its recorded time).

Table, per run: classifier val mAP (last epoch of classifier/log.jsonl), peak precision,
instance recall and duplicate rate (peaks/quality.json), proposal ABO (proposals/quality.json),
pseudo masks (train) mAP@0.25/0.5/0.75 and ABO, Mask R-CNN on val and the upper bound (mAP@0.5),
weak/full (Mask R-CNN / upper bound at mAP@0.5), wall time. Figures in %, except the ratios.
The last line, for programs:

    quality: demo0 pm50=X mr50=Y ub50=Z | demo1 pm50=.. mr50=.. ub50=.. | voc-mini cls=..
    recall=.. precision=.. pm50=..

(pm50, mr50, ub50 in %; cls, recall, precision as fractions; "nan" where a run is missing).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VOC_MINI = Path(os.environ.get("TAG2MASK_VOC_MINI", REPO.parent / "shared/data/voc-mini"))

# name -> (base config file, overrides, targets (None: the default target))
VOC_TARGETS = ["pseudo_masks/evaluation.json", "peaks/quality.json", "classifier/log.jsonl",
               "proposals/quality.json"]
RUNS = {
    "demo0": ("config/config.yaml", {"dataset": {"synthetic": {"seed": 0}}}, None),
    "demo1": ("config/config.yaml", {"dataset": {"synthetic": {"seed": 1}}}, None),
    "voc-mini": ("config/voc.yaml", {"dataset": {"voc": {"root": str(VOC_MINI)}}}, VOC_TARGETS),
    "demo0-irnet": ("config/config.yaml", {"dataset": {"synthetic": {"seed": 0}},
                                           "pseudo_masks": {"method": "irnet"}}, None),
    "demo1-irnet": ("config/config.yaml", {"dataset": {"synthetic": {"seed": 1}},
                                           "pseudo_masks": {"method": "irnet"}}, None),
    "voc-mini-irnet": ("config/voc.yaml", {"dataset": {"voc": {"root": str(VOC_MINI)}},
                                           "pseudo_masks": {"method": "irnet"}}, VOC_TARGETS),
}


def run_dir(name):
    return REPO / "results" / f"quality-{name}"


def config_for(name):
    """The run's overrides, merged over its base config by --configfile (later files win)."""
    return {**RUNS[name][1], "run_name": f"quality-{name}"}


def run(name, threads):
    """One workflow run (what is missing of it); records its wall time."""
    base, _, targets = RUNS[name]
    folder = run_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "quality_config.yaml"
    config.write_text(yaml.safe_dump(config_for(name)))
    # targets first: --configfile takes every word after it up to the next option
    cmd = [sys.executable, "-m", "snakemake", *[f"{folder.relative_to(REPO)}/{t}"
                                                for t in targets or []]]
    # the README's command (`snakemake --cores 2`), with the run's base config and overrides
    cmd += ["--cores", "2", "--configfile", str(REPO / base), str(config)]
    if threads:
        cmd += ["--set-threads", *threads]
    print(f"[{name}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.time() - start
    record = folder / "quality_wall.json"
    previous = json.loads(record.read_text()) if record.exists() else {}
    if wall > 60 or "seconds" not in previous:  # a no-op rerun keeps the real run's time
        record.write_text(json.dumps({"seconds": wall, "command": " ".join(cmd)}))


def read(path, *keys):
    try:
        value = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return math.nan
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return math.nan
        value = value[k]
    return math.nan if value is None else value


def figures(name):
    d = run_dir(name)
    cls = math.nan
    log = d / "classifier/log.jsonl"
    if log.exists():
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        cls = lines[-1].get("val_mAP", math.nan) if lines else math.nan
    f = {"cls": cls,
         "precision": read(d / "peaks/quality.json", "peak_precision"),
         "recall": read(d / "peaks/quality.json", "instance_recall"),
         "duplicates": read(d / "peaks/quality.json", "duplicate_rate"),
         "proposal_abo": read(d / "proposals/quality.json", "splits", "train", "abo"),
         "wall_min": read(d / "quality_wall.json", "seconds") / 60}
    for t in ("0.25", "0.5", "0.75"):
        f[f"pm{t}"] = 100 * read(d / "pseudo_masks/evaluation.json", f"mAP@{t}")
    f["pm_abo"] = 100 * read(d / "pseudo_masks/evaluation.json", "ABO")
    f["mr50"] = 100 * read(d / "maskrcnn/evaluation_val.json", "mAP@0.5")
    f["ub50"] = 100 * read(d / "upper_bound/evaluation_val.json", "mAP@0.5")
    f["weak_full"] = f["mr50"] / f["ub50"] if f["ub50"] else math.nan
    return f


COLUMNS = [("cls", "cls mAP", 3), ("precision", "peak P", 3), ("recall", "peak R", 3),
           ("duplicates", "dup", 3), ("proposal_abo", "prop ABO", 3), ("pm0.25", "pm@.25", 1),
           ("pm0.5", "pm@.5", 1), ("pm0.75", "pm@.75", 1), ("pm_abo", "pm ABO", 1),
           ("mr50", "MR val@.5", 1), ("ub50", "UB val@.5", 1), ("weak_full", "weak/full", 2),
           ("wall_min", "wall min", 1)]


def fmt(v, digits):
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="run (or finish) the workflow runs first")
    ap.add_argument("--only", nargs="+", choices=list(RUNS), help="these runs only")
    ap.add_argument("--set-threads", nargs="+", default=[],
                    help="passed to snakemake (default: none, as the README's command)")
    args = ap.parse_args()
    names = args.only or list(RUNS)
    if args.run:
        for name in names:
            if name.startswith("voc-mini") and not VOC_MINI.exists():
                print(f"[{name}] skipped: {VOC_MINI} not found", file=sys.stderr)
                continue
            run(name, args.set_threads)
    table = {name: figures(name) for name in RUNS}
    print(f"{'run':16s}" + "".join(f"{title:>11s}" for _, title, _ in COLUMNS))
    for name in names:
        print(f"{name:16s}" + "".join(f"{fmt(table[name][k], d):>11s}" for k, _, d in COLUMNS))
    d0, d1, v = table["demo0"], table["demo1"], table["voc-mini"]
    print(f"quality: demo0 pm50={fmt(d0['pm0.5'], 1)} mr50={fmt(d0['mr50'], 1)} "
          f"ub50={fmt(d0['ub50'], 1)} | demo1 pm50={fmt(d1['pm0.5'], 1)} "
          f"mr50={fmt(d1['mr50'], 1)} ub50={fmt(d1['ub50'], 1)} | voc-mini "
          f"cls={fmt(v['cls'], 3)} recall={fmt(v['recall'], 3)} "
          f"precision={fmt(v['precision'], 3)} pm50={fmt(v['pm0.5'], 1)}")


if __name__ == "__main__":
    main()
