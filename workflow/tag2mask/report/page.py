"""The run report: one self-contained HTML file (no external URL, no JS library).

Sections: the verdict (does Mask R-CNN beat its own pseudo masks on this run, WISE's
finding), the metrics table (pseudo masks, Mask R-CNN, self-training rounds, upper bound),
per-class AP, the published VOC 2012 reference points, stage wall times (Snakemake benchmark
files), training curves (inline SVG, report.charts), picture panels (inline PNG,
report.pictures) and what produced the run (report.provenance). The report is evaluation side: it may show ground truth. Any part whose
input is missing is shown as "not available" with the reason instead of failing.

This module gathers what each section shows; templates/report.html.j2 lays it out (Jinja2,
autoescaped). `build_report(inputs, options)` returns the HTML text; `ReportInputs`
(report.readers) names every input.
"""

import datetime
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2

from ..dataset.manifest import read_manifest
from .charts import bar_chart, line_chart
from .pictures import picture_groups
from .provenance import provenance
from .readers import (
    Part,
    pseudo_mask_figures,
    pseudo_mask_method,
    read_benchmarks,
    read_evaluation,
    read_json,
    read_jsonl,
    read_merge_stats,
)

TEMPLATES = Path(__file__).parent / "templates"
THRESHOLDS = ("0.25", "0.5", "0.75")
MEASURES = [(f"mAP@{t}", f"mAP@{t}") for t in THRESHOLDS] + [("AP", "COCO AP"), ("ABO", "ABO")]
MERGE_STATS = [("kept_predictions", "Kept predictions"), ("carried_over", "Carried over"),
               ("no_peak", "Rejected: no peak"), ("below_threshold", "Rejected: below threshold"),
               ("images_with_masks", "Images with masks")]

# Published figures (PASCAL VOC 2012 val, mAP@0.25 / 0.5 / 0.75 and ABO, in %), from
# /work/shared/DESIGN.md. Context only: other data, other protocols, not this run.
REFERENCE_POINTS = [
    ("PRM (Zhou et al. 2018)", 44.3, 26.8, 9.0, 37.6),
    ("WISE (Laradji et al. 2019): PRM peaks + proposals + Mask R-CNN", 49.2, 41.7, 23.7, 55.2),
    ("IRNet (Ahn et al. 2019)", None, 46.7, None, None),
    ("BESTIE with refinement", 61.2, 51.0, 26.6, None),
    ("Fully supervised Mask R-CNN", 76.7, 67.9, 44.9, None),
]


def pct(x):
    """A fraction as a percentage with one decimal ("n/a" for None)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


# --------------------------------------------------------------------------------- verdict

def verdict(pseudo, train, val):
    """(css class, sentence): does Mask R-CNN beat its own pseudo masks on this run?"""
    if pseudo is None:
        return "na", ("Cannot tell whether Mask R-CNN beats its own pseudo masks: the pseudo "
                      "masks have no evaluation on this run.")
    ours, where = (train, "on the same training images") if train is not None else (
        val, ("(Mask R-CNN on the val images, pseudo masks on the training images: "
              "different images, so only indicative)"))
    if ours is None:
        return "na", ("Cannot tell whether Mask R-CNN beats its own pseudo masks: Mask R-CNN "
                      "has no evaluation on this run.")
    keys = [f"mAP@{t}" for t in THRESHOLDS] + ["ABO"]
    comparable = [k for k in keys if ours.get(k) is not None and pseudo.get(k) is not None]
    better = [k for k in comparable if ours[k] > pseudo[k]]
    a, b = ours.get("mAP@0.5"), pseudo.get("mAP@0.5")
    if a is None or b is None:
        return "na", "Cannot tell: mAP@0.5 is undefined (no ground-truth instance)."
    detail = (f"mAP@0.5 {pct(a)} vs {pct(b)} {where}; better on {len(better)} of "
              f"{len(comparable)} measures (mAP@0.25/0.5/0.75, ABO)")
    if a > b:
        return "yes", f"Yes: Mask R-CNN beats its own pseudo masks on this run ({detail})."
    return "no", (f"No: Mask R-CNN does not beat its own pseudo masks on this run ({detail}). "
                  "WISE's finding is not reproduced here.")


def upper_bound_gap(weak, upper):
    """(weak mAP@0.5, upper-bound mAP@0.5, percent of it reached) as text, or None when
    either is unknown."""
    if weak is None or upper is None or not upper.get("mAP@0.5") or weak.get("mAP@0.5") is None:
        return None
    ratio = weak["mAP@0.5"] / upper["mAP@0.5"]
    return pct(weak["mAP@0.5"]), pct(upper["mAP@0.5"]), f"{100 * ratio:.0f}"


# --------------------------------------------------------------------------------- tables

@dataclass
class Row:
    """One row of the metrics table: an evaluation, or why there is none."""
    label: str
    split: str
    evaluation: dict | None
    reason: str

    @property
    def name(self):
        return f"{self.label} ({self.split})"


def pseudo_masks_label(inputs):
    """The pseudo masks' row label, naming the method that made them (retrieval or IRNet)."""
    return f"Pseudo masks ({pseudo_mask_method(inputs.pseudo_masks)})"


def metrics_rows(inputs):
    """The metrics table's rows, in table order."""
    rows = [(pseudo_masks_label(inputs), "train", inputs.pseudo_eval),
            ("Mask R-CNN on pseudo masks", "train", inputs.maskrcnn_train_eval),
            ("Mask R-CNN on pseudo masks", "val", inputs.maskrcnn_eval)]
    for r in sorted(inputs.round_evals):
        rows.append((f"Self-training round {r}", inputs.eval_split, inputs.round_evals[r]))
    if not inputs.round_evals:
        rows.append(("Self-training rounds", inputs.eval_split, Part(None, inputs.rounds_reason)))
    rows.append(("Upper bound: Mask R-CNN on GT masks", inputs.eval_split,
                 inputs.upper_bound_eval))
    return [Row(label, split, read_evaluation(part), part.why()) for label, split, part in rows]


def _fraction(x):
    return None if x is None else f"{x:.3f}"


VERIFICATION_MEDIAN = "median classifier probability of the mask's class (masks shown to it)"


def stage_rows(inputs):
    """(stage, measure, value or None, why missing) per stage: what each stage delivered,
    so a weak result can be traced to the stage that lost it."""
    rows = []
    log = read_jsonl(inputs.classifier_log) if inputs.classifier_log.available else []
    last = log[-1] if log else {}
    rows.append(("Classifier", "val classification mAP (last epoch)",
                 _fraction(last.get("val_mAP")),
                 inputs.classifier_log.why() if not log else "the dataset has no val split"))
    peaks = read_json(inputs.peaks_quality)
    why = inputs.peaks_quality.why()
    for key, measure in (("peaks_per_image", "peaks per image"),
                         ("peak_precision", "precision (peak inside an instance of its class)"),
                         ("instance_recall", "instance recall (instances with a peak)"),
                         ("duplicate_rate", "duplicates (instances with several peaks)")):
        value = None if peaks is None else peaks.get(key)
        rows.append(("Peaks", measure, None if value is None else (
            f"{value:.1f}" if key == "peaks_per_image" else _fraction(value)), why))
    props = read_json(inputs.proposals_quality)
    split = next(iter((props or {}).get("splits", {}).values()), None)
    why = inputs.proposals_quality.why() if props is None else "not measured"
    for key, measure in (("proposals_per_image", "proposals per image"),
                         ("abo", "ABO (best IoU per instance)"),
                         ("recall@0.7", "recall@0.7"),
                         ("cpu_seconds_per_image", "CPU seconds per image")):
        value = None if split is None else split.get(key)
        rows.append(("Proposals", measure, None if value is None else (
            f"{value:.3f}" if "abo" in key or "recall" in key else f"{value:.2f}"), why))
    figures = pseudo_mask_figures(inputs.pseudo_masks)
    why = inputs.pseudo_masks.why()
    per_image = None if not figures or not figures["images"] else \
        f"{figures['instances'] / figures['images']:.2f}"
    rows.append((f"Pseudo masks ({pseudo_mask_method(inputs.pseudo_masks)})",
                 "masks per image", per_image, why))
    rows.append((f"Pseudo masks ({pseudo_mask_method(inputs.pseudo_masks)})",
                 "median confidence", _fraction(figures and figures["median_score"]), why))
    why = why if not figures else "verification is off (config verification.enabled)"
    for key, measure in (
            ("median_verification", VERIFICATION_MEDIAN),
            ("lowered", "share of masks whose confidence it lowered")):
        rows.append(("Verification", measure, _fraction(figures and figures.get(key)), why))
    return rows


def per_class(rows, threshold="0.5"):
    """(column names, [(class, [AP@threshold per column])]) of the rows with an evaluation."""
    have = [row for row in rows if row.evaluation is not None]
    classes = []
    for row in have:
        classes += [c for c in row.evaluation.get("per_class", {}) if c not in classes]
    return [row.name for row in have], [
        (c, [row.evaluation.get("per_class", {}).get(c, {}).get(f"AP@{threshold}")
             for row in have]) for c in classes]


def rounds_table(inputs):
    """[(round, merge stats or None, reason)] of the self-training pseudo-mask stores."""
    return [(r, read_merge_stats(part) if part.available else None, part.why())
            for r, part in sorted(inputs.round_stores.items())]


def timings(inputs):
    """Stage wall times of this run's jobs: a dict of the rows, totals and bar chart, or the
    reason (a str) why there are none."""
    part = inputs.benchmarks
    if not part.available:
        return part.why()
    stages = read_benchmarks(part.path, inputs.shards, inputs.rounds, inputs.upper_bound,
                             inputs.val_split)
    if not stages:
        return f"no benchmark files in {part.path}"
    order = sorted(stages.items(), key=lambda kv: -kv[1]["seconds"])
    return {"stages": order, "jobs": sum(v["jobs"] for v in stages.values()),
            "seconds": sum(v["seconds"] for v in stages.values()),
            "chart": bar_chart([(n, v["seconds"]) for n, v in order])}


def curves(inputs):
    """(charts, [(log, reason)] of the logs that are not available)."""
    charts, missing = [], []
    cls = read_jsonl(inputs.classifier_log)
    if cls:
        ep = [r.get("epoch", i + 1) for i, r in enumerate(cls)]
        charts.append(line_chart("Classifier: training loss",
                                 {"loss": list(zip(ep, [r.get("loss") for r in cls]))},
                                 ylabel="loss"))
        if any(r.get("val_mAP") is not None for r in cls):
            charts.append(line_chart("Classifier: val classification mAP",
                                     {"val mAP": list(zip(ep, [r.get("val_mAP") for r in cls]))},
                                     ylabel="mAP"))
    else:
        missing.append(("classifier", inputs.classifier_log.why()))
    runs = [("Mask R-CNN", inputs.maskrcnn_log), ("upper bound", inputs.upper_bound_log)]
    runs += [(f"round {r}", inputs.round_logs[r]) for r in sorted(inputs.round_logs)]
    total, mask = {}, {}
    for name, part in runs:
        recs = read_jsonl(part)
        if not recs:
            missing.append((f"{name} log", part.why()))
            continue
        ep = [r.get("epoch", i + 1) for i, r in enumerate(recs)]
        total[name] = list(zip(ep, [r.get("loss") for r in recs]))
        mask[name] = list(zip(ep, [r.get("loss_mask") for r in recs]))
    if total:
        charts.append(line_chart("Mask R-CNN: total training loss", total, ylabel="loss"))
        charts.append(line_chart("Mask R-CNN: mask loss", mask, ylabel="loss_mask"))
    return [c for c in charts if c], missing


def training_masks(inputs):
    """[(model, {objects, ignored, left_out})]: what became of the pseudo masks in each Mask
    R-CNN training the run has a log of (its epochs' records say it; older logs do not)."""
    runs = [("Mask R-CNN", inputs.maskrcnn_log)]
    runs += [(f"self-training round {r}", inputs.round_logs[r]) for r in sorted(inputs.round_logs)]
    out = []
    for name, part in runs:
        recs = read_jsonl(part)
        if recs and isinstance(recs[-1].get("pseudo_masks"), dict):
            out.append((name, recs[-1]["pseudo_masks"]))
    return out


# --------------------------------------------------------------------------------- page

@cache
def environment():
    """The Jinja2 environment of the report's templates (autoescaped)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["pct"] = pct
    return env


def build_report(inputs, options):
    """The report as one HTML string."""
    manifest = read_manifest(inputs.manifest)
    rows = metrics_rows(inputs)
    evs = {(row.label, row.split): row.evaluation for row in rows}
    weak = "Mask R-CNN on pseudo masks"
    splits = manifest.stats.get("splits") or {s: len(manifest.split(s)) for s in manifest.splits}
    chart_list, missing_logs = curves(inputs)
    columns, classes = per_class(rows)
    return environment().get_template("report.html.j2").render(
        title=f"tag2mask report: {inputs.run_name or manifest.dataset}",
        manifest=manifest,
        splits=", ".join(f"{k} {v}" for k, v in sorted(splits.items())),
        generated=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        verdict=verdict(evs[(pseudo_masks_label(inputs), "train")], evs[(weak, "train")],
                        evs[(weak, "val")]),
        gap=upper_bound_gap(evs[(weak, inputs.eval_split)],
                            evs[("Upper bound: Mask R-CNN on GT masks", inputs.eval_split)]),
        measures=MEASURES,
        rows=rows,
        stages=stage_rows(inputs),
        rounds=rounds_table(inputs),
        merge_stats=MERGE_STATS,
        per_class_columns=columns,
        per_class_rows=classes,
        references=REFERENCE_POINTS,
        timings=timings(inputs),
        charts=chart_list,
        training_masks=training_masks(inputs),
        missing_logs=missing_logs,
        picture_groups=picture_groups(inputs, manifest, options),
        panel_size=options["panel_size"],
        provenance=provenance(),
    )
