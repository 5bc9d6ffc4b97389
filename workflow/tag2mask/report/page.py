"""The run report: one self-contained HTML file (no external URL, no JS library).

Sections: the verdict (does Mask R-CNN beat its own pseudo masks on this run, WISE's
finding), the metrics table (pseudo masks, Mask R-CNN, self-training rounds, upper bound),
per-class AP, the published VOC 2012 reference points, stage wall times (Snakemake benchmark
files), training curves (inline SVG) and picture panels (inline base64 PNG). The report is
evaluation side: it may show ground truth. Any part whose input is missing is shown as
"not available" with the reason instead of failing.

`build_report(inputs, options)` returns the HTML text; `ReportInputs` names every input.
"""

import base64
import csv
import datetime
import html
import io
import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core import masks as rle
from ..core.errors import InputError
from ..core.panels import outline
from ..core.store import StoreReader
from ..dataset.images import load_rgb
from ..dataset.manifest import read_manifest

log = logging.getLogger(__name__)

THRESHOLDS = ("0.25", "0.5", "0.75")
MEASURES = [(f"mAP@{t}", f"mAP@{t}") for t in THRESHOLDS] + [("AP", "COCO AP"), ("ABO", "ABO")]

# Published figures (PASCAL VOC 2012 val, mAP@0.25 / 0.5 / 0.75 and ABO, in %), from
# /work/shared/DESIGN.md. Context only: other data, other protocols, not this run.
REFERENCE_POINTS = [
    ("PRM (Zhou et al. 2018)", 44.3, 26.8, 9.0, 37.6),
    ("WISE (Laradji et al. 2019): PRM peaks + proposals + Mask R-CNN", 49.2, 41.7, 23.7, 55.2),
    ("IRNet (Ahn et al. 2019)", None, 46.7, None, None),
    ("BESTIE with refinement", 61.2, 51.0, 26.6, None),
    ("Fully supervised Mask R-CNN", 76.7, 67.9, 44.9, None),
]
PANEL_SCORE = 0.5  # predictions drawn in the panels score at least this


@dataclass
class Part:
    """An optional input: a path, or the reason it is not available."""
    path: Path = None
    reason: str = "not produced by this run"

    @property
    def available(self):
        return self.path is not None and Path(self.path).exists()

    def why(self):
        if self.path is not None and not Path(self.path).exists():
            return f"{self.path} does not exist"
        return self.reason


@dataclass
class ReportInputs:
    manifest: Path
    run_name: str = ""
    eval_split: str = "val"  # split of the upper-bound and self-training evaluations
    rounds_reason: str = "self-training was not run"  # shown when round_evals is empty
    pseudo_eval: Part = field(default_factory=Part)         # pseudo masks vs GT (train)
    maskrcnn_train_eval: Part = field(default_factory=Part)  # Mask R-CNN on the train images
    maskrcnn_eval: Part = field(default_factory=Part)        # Mask R-CNN on val
    upper_bound_eval: Part = field(default_factory=Part)     # GT-trained Mask R-CNN on val
    round_evals: dict = field(default_factory=dict)          # round -> Part (val)
    round_stores: dict = field(default_factory=dict)         # round -> Part (pseudo masks)
    classifier_log: Part = field(default_factory=Part)
    maskrcnn_log: Part = field(default_factory=Part)
    upper_bound_log: Part = field(default_factory=Part)
    round_logs: dict = field(default_factory=dict)           # round -> Part
    benchmarks: Part = field(default_factory=Part)           # folder of Snakemake .tsv files
    shards: int | None = None  # this run's shard count: older runs' extra shard files are stale
    peaks: Part = field(default_factory=Part)
    pseudo_masks: Part = field(default_factory=Part)
    predictions_val: Part = field(default_factory=Part)      # COCO results of Mask R-CNN on val
    gt_train: Part = field(default_factory=Part)
    gt_val: Part = field(default_factory=Part)


# --------------------------------------------------------------------------------- reading

def read_evaluation(part):
    """An evaluation JSON (tag2mask evaluate) or None."""
    if not part.available:
        return None
    try:
        data = json.loads(Path(part.path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(part.path, f"evaluation is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "mAP@0.5" not in data:
        raise InputError(part.path, "not a tag2mask evaluation (no mAP@0.5)")
    return data


def read_jsonl(part):
    """Records of a log.jsonl (blank lines skipped); [] when not available."""
    if not part.available:
        return []
    out = []
    for i, line in enumerate(Path(part.path).read_text().splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(part.path, f"line {i + 1} is not JSON ({e})") from None
    return out


def read_benchmarks(folder, shards=None):
    """Stage -> {jobs, seconds (sum of the `s` column), max} from Snakemake benchmark files.

    Files of one sharded stage (e.g. peaks_0.tsv, peaks_1.tsv or peaks/3.tsv) are summed
    into one stage (trailing shard numbers are dropped from the name). With `shards`, the
    files of a sharded stage's folder (<stage>/<shard>.tsv) count only for shards below it:
    the others were left by an earlier run with more shards."""
    stages = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max": 0.0})
    folder = Path(folder)
    for path in sorted(folder.rglob("*.tsv")):
        if (shards is not None and path.parent != folder and path.stem.isdigit()
                and int(path.stem) >= shards):
            log.info("%s: shard %s of an earlier run with more shards, ignored", path, path.stem)
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            log.warning("%s: no `s` column, ignored", path)
            continue
        name = path.relative_to(folder).with_suffix("").as_posix()
        stage = re.sub(r"[/_.-]?(shard[_-]?)?\d+$", "", name) or name
        for row in rows:
            try:
                s = float(row["s"])
            except (TypeError, ValueError):
                continue
            st = stages[stage]
            st["jobs"] += 1
            st["seconds"] += s
            st["max"] = max(st["max"], s)
    return dict(stages)


# --------------------------------------------------------------------------------- formatting

def pct(x):
    """A fraction as a percentage with one decimal ("n/a" for None)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def esc(x):
    return html.escape(str(x))


def na(reason):
    return f'<span class="na">not available: {esc(reason)}</span>'


def verdict(pseudo, train, val):
    """(css class, sentence): does Mask R-CNN beat its own pseudo masks on this run?"""
    if pseudo is None:
        return "na", ("Cannot tell whether Mask R-CNN beats its own pseudo masks: the pseudo "
                      "masks have no evaluation on this run.")
    ours, where = (train, "on the same training images") if train is not None else (
        val, "(Mask R-CNN on the val images, pseudo masks on the training images: different "
             "images, so only indicative)")
    if ours is None:
        return "na", ("Cannot tell whether Mask R-CNN beats its own pseudo masks: Mask R-CNN "
                      "has no evaluation on this run.")
    keys = [f"mAP@{t}" for t in THRESHOLDS] + ["ABO"]
    better = [k for k in keys if ours.get(k) is not None and pseudo.get(k) is not None
              and ours[k] > pseudo[k]]
    comparable = [k for k in keys if ours.get(k) is not None and pseudo.get(k) is not None]
    a, b = ours.get("mAP@0.5"), pseudo.get("mAP@0.5")
    if a is None or b is None:
        return "na", "Cannot tell: mAP@0.5 is undefined (no ground-truth instance)."
    detail = (f"mAP@0.5 {pct(a)} vs {pct(b)} {where}; better on {len(better)} of "
              f"{len(comparable)} measures (mAP@0.25/0.5/0.75, ABO)")
    if a > b:
        return "yes", f"Yes: Mask R-CNN beats its own pseudo masks on this run ({detail})."
    return "no", (f"No: Mask R-CNN does not beat its own pseudo masks on this run ({detail}). "
                  "WISE's finding is not reproduced here.")


def upper_bound_sentence(weak, upper):
    """How close the weakly supervised model comes to the GT-trained one ('' if unknown)."""
    if weak is None or upper is None or not upper.get("mAP@0.5") or weak.get("mAP@0.5") is None:
        return ""
    ratio = weak["mAP@0.5"] / upper["mAP@0.5"]
    return (f"<p id='upper-bound-gap'>Against the upper bound (the same Mask R-CNN trained on "
            f"the ground-truth masks of the same images): mAP@0.5 {pct(weak['mAP@0.5'])} vs "
            f"{pct(upper['mAP@0.5'])}, i.e. {100 * ratio:.0f}% of the fully supervised "
            f"figure.</p>")


# --------------------------------------------------------------------------------- SVG charts

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22"]


def _nice(v):
    return f"{v:.3g}"


def line_chart(title, series, xlabel="epoch", ylabel="", width=420, height=240):
    """Inline SVG of named series {name: [(x, y), ...]}; None values are skipped."""
    series = {k: [(float(x), float(y)) for x, y in v if y is not None and math.isfinite(y)]
              for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    xs = [x for v in series.values() for x, _ in v]
    ys = [y for v in series.values() for _, y in v]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(ys), 0.0), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    left, right, top, bottom = 52, 12, 26, 38
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="ct">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for frac in (0, 0.5, 1):
        yv = y0 + frac * (y1 - y0)
        parts.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end" '
                     f'class="tk">{_nice(yv)}</text>')
        xv = x0 + frac * (x1 - x0)
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle" '
                     f'class="tk">{_nice(xv)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" '
                 f'class="tk">{esc(xlabel)}</text>')
    if ylabel:
        parts.append(f'<text x="12" y="{top + ph / 2}" text-anchor="middle" class="tk" '
                     f'transform="rotate(-90 12 {top + ph / 2})">{esc(ylabel)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
                     f'points="{path}"/>')
        if len(pts) <= 40:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{color}"/>'
                      for x, y in pts]
        parts.append(f'<text x="{left + pw - 4}" y="{top + 14 + 13 * i}" text-anchor="end" '
                     f'class="lg" fill="{color}">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(rows, width=560):
    """Horizontal bars [(label, seconds)] as inline SVG."""
    if not rows:
        return None
    bar, gap, left, right = 16, 5, 190, 70
    height = len(rows) * (bar + gap) + gap
    top = max(s for _, s in rows) or 1.0
    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="stage wall times">']
    for i, (label, s) in enumerate(rows):
        y = gap + i * (bar + gap)
        w = (width - left - right) * s / top
        parts.append(f'<text x="{left - 6}" y="{y + bar - 4}" text-anchor="end" '
                     f'class="tk">{esc(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{max(w, 1):.1f}" height="{bar}" '
                     f'fill="{PALETTE[0]}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 4}" class="tk">'
                     f'{s:.1f} s</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------- panels

def _color(i):
    rng = np.random.default_rng(i * 7919 + 11)
    return np.array(rng.integers(50, 256, 3), np.float32)


def _class_color(c):
    """A fixed, well separated colour per class (the chart palette)."""
    h = PALETTE[int(c) % len(PALETTE)].lstrip("#")
    return np.array([int(h[k:k + 2], 16) for k in (0, 2, 4)], np.float32)



def overlay(image, masks=(), labels=(), points=(), point_labels=(), size=None):
    """RGB picture (PIL), scaled so its longest side is `size`: masks tinted by instance with
    outlines in their class colour; points drawn (after scaling, so they stay visible) as
    crosses in their class colour."""
    canvas = image.astype(np.float32)
    for k, (m, c) in enumerate(zip(masks, labels)):
        canvas[m] = 0.55 * canvas[m] + 0.45 * _color(k)
        canvas[outline(m)] = _class_color(c)
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    scale = 1.0
    if size:
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(img)
    r = 5
    for (y, x), c in zip(points, point_labels):
        x, y = (x + 0.5) * scale, (y + 0.5) * scale
        col = tuple(int(v) for v in _class_color(c))
        for width, fill in ((5, (0, 0, 0)), (2, col)):
            draw.line([(x - r, y), (x + r, y)], fill=fill, width=width)
            draw.line([(x, y - r), (x, y + r)], fill=fill, width=width)
    return img


def png_data_uri(img, size):
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.NEAREST if max(img.size) < size else
                  Image.Resampling.LANCZOS)
    if max(img.size) < size:  # small images: scale up so they can be seen
        f = size / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))),
                         Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _gt_index(part):
    """image name -> (masks counts, labels, h, w) of a GT JSON (non-crowd)."""
    if not part.available:
        return None
    gt = json.loads(Path(part.path).read_text())
    images = {im["id"]: im for im in gt["images"]}
    out = {im.get("name", str(im["id"])): ([], [], im["height"], im["width"])
           for im in gt["images"]}
    for a in gt["annotations"]:
        if a.get("iscrowd"):
            continue
        im = images[a["image_id"]]
        seg = a["segmentation"]
        if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
            entry = out[im.get("name", str(im["id"]))]
            entry[0].append(seg["counts"])
            entry[1].append(a["category_id"] - 1)
    return out


def _cell(img, size, caption):
    return (f'<figure style="width:{size}px"><img src="{png_data_uri(img, size)}" '
            f'alt="{esc(caption)}">'
            f'<figcaption>{esc(caption)}</figcaption></figure>')


def _na_cell(caption, reason, size):
    return (f'<figure class="missing" style="width:{size}px">'
            f'<div style="width:{size}px;height:{size}px">{na(reason)}</div>'
            f'<figcaption>{esc(caption)}</figcaption></figure>')


def panels(inputs, manifest, options):
    """HTML of the picture panels: train images (image, peaks, pseudo masks, GT) and val
    images (image, Mask R-CNN predictions, GT)."""
    n, size = options["panel_images"], options["panel_size"]
    if n == 0:
        return "<p>" + na("report.panel_images is 0") + "</p>"
    out = []
    classes = manifest.classes

    def legend():
        items = []
        for c, name in enumerate(classes):
            col = "#%02x%02x%02x" % tuple(int(v) for v in _class_color(c))
            items.append(f'<span class="sw" style="background:{col}"></span>{esc(name)}')
        return '<p class="legend">Outline / cross colour = class: ' + " ".join(items) + "</p>"

    # train: image | peaks | pseudo masks | GT
    train = manifest.split("train")[:n]
    gt_train = _gt_index(inputs.gt_train)
    peaks = StoreReader(inputs.peaks.path, "peaks") if inputs.peaks.available else None
    pseudo = (StoreReader(inputs.pseudo_masks.path, "pseudo_masks")
              if inputs.pseudo_masks.available else None)
    try:
        out.append("<h3>Training images: peaks, pseudo masks, ground truth</h3>" + legend())
        for rec in train:
            image = load_rgb(rec.path)
            h, w = image.shape[:2]
            row = [_cell(overlay(image, size=size), size,
                         f"{rec.id} ({', '.join(rec.labels)})")]
            if peaks is not None and rec.id in peaks:
                e = peaks.read(rec.id, ["peak_class", "peak_yx"])
                yx = np.asarray(e["peak_yx"]).reshape(-1, 2)
                row.append(_cell(overlay(image, points=yx, point_labels=e["peak_class"],
                                         size=size), size,
                                 f"{len(yx)} peaks"))
            else:
                row.append(_na_cell("peaks", inputs.peaks.why() if peaks is None
                                    else "image not in the peaks store", size))
            if pseudo is not None and rec.id in pseudo:
                e = pseudo.read(rec.id, ["masks", "labels", "peak_yx"])
                m = rle.decode(e["masks"], h, w)
                yx = np.asarray(e["peak_yx"]).reshape(-1, 2)
                ok = np.isfinite(yx).all(1)
                row.append(_cell(overlay(image, m, e["labels"], yx[ok],
                                         np.asarray(e["labels"])[ok], size), size,
                                 f"{len(m)} pseudo masks"))
            else:
                row.append(_na_cell("pseudo masks", inputs.pseudo_masks.why() if pseudo is None
                                    else "image not in the pseudo-mask store", size))
            row.append(_gt_cell(gt_train, rec, image, size, inputs.gt_train))
            out.append('<div class="row">' + "".join(row) + "</div>")
    finally:
        for r in (peaks, pseudo):
            if r is not None:
                r.close()

    # val: image | Mask R-CNN | GT
    val = manifest.split("val")[:n]
    if not val:
        out.append("<h3>Validation images</h3><p>" + na("the dataset has no val split") + "</p>")
        return "\n".join(out)
    gt_val = _gt_index(inputs.gt_val)
    preds = defaultdict(list)
    if inputs.predictions_val.available:
        for p in json.loads(Path(inputs.predictions_val.path).read_text()):
            if p["score"] >= PANEL_SCORE:
                preds[int(p["image_id"])].append(p)
    out.append(f"<h3>Validation images: Mask R-CNN predictions (score &ge; {PANEL_SCORE}), "
               f"ground truth</h3>")
    for rec in val:
        image = load_rgb(rec.path)
        h, w = image.shape[:2]
        row = [_cell(overlay(image, size=size), size,
                     f"{rec.id} ({', '.join(rec.labels)})")]
        if inputs.predictions_val.available:
            ps = preds.get(manifest.coco_image_id(rec.id), [])
            m = rle.decode([p["segmentation"]["counts"] for p in ps], h, w)
            row.append(_cell(overlay(image, m, [p["category_id"] - 1 for p in ps],
                                     size=size), size,
                             f"{len(ps)} predictions"))
        else:
            row.append(_na_cell("Mask R-CNN", inputs.predictions_val.why(), size))
        row.append(_gt_cell(gt_val, rec, image, size, inputs.gt_val))
        out.append('<div class="row">' + "".join(row) + "</div>")
    return "\n".join(out)


def _gt_cell(index, rec, image, size, part):
    if index is None:
        return _na_cell("ground truth", part.why(), size)
    if rec.id not in index:
        return _na_cell("ground truth", "image not in the ground truth", size)
    counts, labels, h, w = index[rec.id]
    return _cell(overlay(image, rle.decode(counts, h, w), labels, size=size), size,
                 f"ground truth: {len(counts)} instances")


# --------------------------------------------------------------------------------- sections

def metrics_rows(inputs):
    """[(label, split, evaluation dict or None, reason)] in table order."""
    rows = [("Pseudo masks (retrieval)", "train", inputs.pseudo_eval),
            ("Mask R-CNN on pseudo masks", "train", inputs.maskrcnn_train_eval),
            ("Mask R-CNN on pseudo masks", "val", inputs.maskrcnn_eval)]
    for r in sorted(inputs.round_evals):
        rows.append((f"Self-training round {r}", inputs.eval_split, inputs.round_evals[r]))
    if not inputs.round_evals:
        rows.append(("Self-training rounds", inputs.eval_split, Part(None, inputs.rounds_reason)))
    rows.append(("Upper bound: Mask R-CNN on GT masks", inputs.eval_split,
                 inputs.upper_bound_eval))
    return [(label, split, read_evaluation(part), part.why()) for label, split, part in rows]


def metrics_table(rows):
    head = "".join(f"<th>{esc(h)}</th>" for _, h in MEASURES)
    lines = [f"<table class='metrics'><thead><tr><th>Masks</th><th>Split</th>{head}"
             "<th>Images</th><th>Predictions</th><th>GT instances</th></tr></thead><tbody>"]
    for label, split, ev, reason in rows:
        if ev is None:
            lines.append(f"<tr><td>{esc(label)}</td><td>{esc(split)}</td>"
                         f"<td colspan='{len(MEASURES) + 3}'>{na(reason)}</td></tr>")
            continue
        cells = "".join(f"<td class='num'>{pct(ev.get(k))}</td>" for k, _ in MEASURES)
        lines.append(f"<tr><td>{esc(label)}</td><td>{esc(split)}</td>{cells}"
                     f"<td class='num'>{esc(ev.get('images', ''))}</td>"
                     f"<td class='num'>{esc(ev.get('predictions', ''))}</td>"
                     f"<td class='num'>{esc(ev.get('gt_instances', ''))}</td></tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def per_class_table(rows, threshold="0.5"):
    have = [(f"{label} ({split})", ev) for label, split, ev, _ in rows if ev is not None]
    if not have:
        return "<p>" + na("no evaluation on this run") + "</p>"
    classes = []
    for _, ev in have:
        for c in ev.get("per_class", {}):
            if c not in classes:
                classes.append(c)
    head = "".join(f"<th>{esc(name)}</th>" for name, _ in have)
    lines = [f"<table class='metrics'><thead><tr><th>Class</th>{head}</tr></thead><tbody>"]
    for c in classes:
        cells = "".join(
            f"<td class='num'>{pct(ev.get('per_class', {}).get(c, {}).get(f'AP@{threshold}'))}"
            f"</td>" for _, ev in have)
        lines.append(f"<tr><td>{esc(c)}</td>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def reference_table():
    lines = ["<table class='metrics ref'><thead><tr><th>Method (published, PASCAL VOC 2012 "
             "val)</th><th>mAP@0.25</th><th>mAP@0.5</th><th>mAP@0.75</th><th>ABO</th></tr>"
             "</thead><tbody>"]
    for name, *vals in REFERENCE_POINTS:
        cells = "".join(f"<td class='num'>{'&ndash;' if v is None else f'{v:.1f}'}</td>"
                        for v in vals)
        lines.append(f"<tr><td>{esc(name)}</td>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def timing_section(part, shards=None):
    if not part.available:
        return "<p>" + na(part.why()) + "</p>"
    stages = read_benchmarks(part.path, shards)
    if not stages:
        return "<p>" + na(f"no benchmark files in {part.path}") + "</p>"
    order = sorted(stages.items(), key=lambda kv: -kv[1]["seconds"])
    total = sum(v["seconds"] for v in stages.values())
    lines = ["<table class='metrics'><thead><tr><th>Stage</th><th>Jobs</th><th>Wall time, "
             "s (sum over jobs)</th><th>Longest job, s</th></tr></thead><tbody>"]
    for name, v in order:
        lines.append(f"<tr><td>{esc(name)}</td><td class='num'>{v['jobs']}</td>"
                     f"<td class='num'>{v['seconds']:.1f}</td>"
                     f"<td class='num'>{v['max']:.1f}</td></tr>")
    lines.append(f"<tr class='total'><td>all stages</td><td class='num'>"
                 f"{sum(v['jobs'] for v in stages.values())}</td><td class='num'>{total:.1f}"
                 f"</td><td></td></tr></tbody></table>")
    chart = bar_chart([(n, v["seconds"]) for n, v in order])
    return ("<p>From the Snakemake benchmark files (column <code>s</code>); jobs that ran "
            "side by side overlap, so the sum exceeds the elapsed time.</p>"
            + "\n".join(lines) + (f"<div class='chart'>{chart}</div>" if chart else ""))


def curves_section(inputs):
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
    html_charts = "".join(f"<div class='chart'>{c}</div>" for c in charts if c)
    notes = "".join(f"<li>{esc(n)}: {na(r)}</li>" for n, r in missing)
    return html_charts + (f"<ul>{notes}</ul>" if notes else "")


def rounds_section(inputs):
    if not inputs.round_stores:
        return ""
    lines = ["<table class='metrics'><thead><tr><th>Round</th><th>Kept predictions</th>"
             "<th>Carried over</th><th>Rejected: no peak</th><th>Rejected: below threshold"
             "</th><th>Images with masks</th></tr></thead><tbody>"]
    for r in sorted(inputs.round_stores):
        part = inputs.round_stores[r]
        if not part.available:
            lines.append(f"<tr><td>{r}</td><td colspan='5'>{na(part.why())}</td></tr>")
            continue
        with StoreReader(part.path, "pseudo_masks") as s:
            st = json.loads(s.attrs.get("merge_stats", "{}"))
        lines.append(f"<tr><td>{r}</td>" + "".join(
            f"<td class='num'>{st.get(k, 0)}</td>" for k in
            ("kept_predictions", "carried_over", "no_peak", "below_threshold",
             "images_with_masks")) + "</tr>")
    lines.append("</tbody></table>")
    return "<h3>Self-training pseudo masks</h3>" + "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
 color:#222;max-width:1200px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.6em}
table.metrics{border-collapse:collapse;margin:8px 0}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:3px 8px;font-size:.9em}
table.metrics th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold}.na{color:#888;font-style:italic}
.verdict{padding:10px 14px;border-radius:4px;font-size:1.05em}
.verdict.yes{background:#e3f4e1;border:1px solid #7bbf73}
.verdict.no{background:#fbe5e1;border:1px solid #d9857a}
.verdict.na{background:#eee;border:1px solid #bbb}
.row{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:10px}
figure{margin:0;text-align:center}figure img{display:block;image-rendering:pixelated}
figure.missing div{display:flex;align-items:center;justify-content:center;box-sizing:border-box;
 border:1px dashed #bbb;font-size:.8em;padding:6px;overflow-wrap:anywhere}
figcaption{font-size:.75em;color:#555;max-width:220px}
.chart{display:inline-block;margin:6px 12px 6px 0}
svg .ct{font-size:13px;font-weight:bold}svg .tk{font-size:11px;fill:#444}
svg .lg{font-size:11px;font-weight:bold}
.sw{display:inline-block;width:11px;height:11px;margin:0 3px 0 10px;vertical-align:middle}
.legend{font-size:.85em}.ref td{color:#444}
"""

# Marks the page once every picture has decoded, so a headless browser check can see it.
IMAGE_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.documentElement.setAttribute('data-images-total', String(imgs.length));
  document.documentElement.setAttribute('data-images-loaded', bad.length ? 'missing' : 'all');
});
"""


def build_report(inputs, options):
    """The report as one HTML string."""
    manifest = read_manifest(inputs.manifest)
    rows = metrics_rows(inputs)
    evs = {(label, split): ev for label, split, ev, _ in rows}
    cls, sentence = verdict(evs[("Pseudo masks (retrieval)", "train")],
                            evs[("Mask R-CNN on pseudo masks", "train")],
                            evs[("Mask R-CNN on pseudo masks", "val")])
    splits = manifest.stats.get("splits") or {s: len(manifest.split(s)) for s in manifest.splits}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"tag2mask report: {inputs.run_name or manifest.dataset}"
    body = [
        f"<h1>{esc(title)}</h1>",
        f"<p>Dataset <b>{esc(manifest.dataset)}</b>: {len(manifest.classes)} classes "
        f"({esc(', '.join(manifest.classes))}); images per split: "
        f"{esc(', '.join(f'{k} {v}' for k, v in sorted(splits.items())))}. Generated {now}.</p>",
        f"<p class='verdict {cls}' id='verdict'>{esc(sentence)}</p>",
        upper_bound_sentence(evs[("Mask R-CNN on pseudo masks", inputs.eval_split)],
                             evs[("Upper bound: Mask R-CNN on GT masks", inputs.eval_split)]),
        "<h2>Results of this run</h2>",
        "<p>Instance-mask AP against the ground truth, in %, with tag2mask's evaluator "
        "(pycocotools COCOeval, 101-point AP, mean over classes with GT; ABO class-agnostic). "
        "The pseudo masks exist on the training images only; Mask R-CNN is scored on the "
        "training images (same images as its pseudo masks) and on val.</p>",
        metrics_table(rows),
        rounds_section(inputs),
        "<h3>Per-class AP@0.5 (%)</h3>",
        per_class_table(rows),
        "<h2>Published reference points (not this run)</h2>",
        "<p>PASCAL VOC 2012 val figures from the papers (in %), for context only: another "
        "dataset, and protocols differ between codebases.</p>",
        reference_table(),
        "<h2>Stage wall times</h2>",
        timing_section(inputs.benchmarks, inputs.shards),
        "<h2>Training curves</h2>",
        curves_section(inputs),
        "<h2>Pictures</h2>",
        panels(inputs, manifest, options),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b)
            + f"\n<script>{IMAGE_CHECK_JS}</script>\n</body></html>\n")
