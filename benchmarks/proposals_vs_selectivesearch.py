"""Benchmark: built-in proposals vs selective search (the selectivesearch package, OpenCV's).

Ours: tag2mask.proposals.builtin. Theirs: the `selectivesearch` PyPI package, and OpenCV's
cv2.ximgproc.segmentation selective search in its fast and quality modes.

Speed (CPU seconds per image) and mask quality (ABO, recall@0.5/0.7 against GT instances) on
the same images: the project's synthetic images (textured shapes on cluttered textured
backgrounds, 128 px, as in the demo) and, when present, voc-mini photographs (train list, GT
from SegmentationObject, void pixels removed from proposals before the IoU).

Neither is a tag2mask dependency. Install them into the venv for this script only: the
package with `pip install selectivesearch`, OpenCV with the benchmark-only `bench` extra
(`pip install -e ".[bench]"`, i.e. opencv-contrib-python-headless). Rows of one that is not
installed are skipped with a line saying so; without voc-mini the OpenCV rows are skipped.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/proposals_vs_selectivesearch.py

A plain run uses the first 40 voc-mini train images (--voc-images; OpenCV's quality mode
costs about 1.2 CPU s per image at 384 px) and 20 synthetic ones: about 3 CPU minutes
without the package (its runs add about 5 s per voc-mini image). Its last line is

    proposals_vs_opencv: speed_ratio=X abo_ours=Y abo_opencv=Z

X = OpenCV fast mode's CPU s per image / ours, Y and Z = box ABO (below) of ours and of
OpenCV's fast mode, both at our working size, for the setting recommended for photos
(--recommended, default photos_fast); "proposals_vs_opencv: skipped (why)" when not run.

The selectivesearch package returns, per region, a box and the list of its Felzenszwalb
segment labels, plus the label map; its masks here are built exactly from those labels (not
from filled boxes), with the same RLE writer as ours, and that time counts as its. It runs
single-strategy selective search (HSV colour + LBP texture + size + fill) in these
configurations:
- selectivesearch: on the image as given, sigma=0.9, min_size=10 and scale=500 (its README
  example) on voc-mini, 100 on the 128 px synthetic images; the goal's comparison;
- selectivesearch_defaults: on the image, its function's defaults (scale=1, sigma=0.8,
  min_size=50): many more, smaller segments; better ABO, slower;
- both again @<working size>: on the image downscaled to our default working size (256 px,
  PIL bilinear as ours), its label map upsampled back (nearest, as ours): the same
  resolution as ours. Only where images are larger (not the 128 px synthetic ones).
`--no-ss-variants` runs the first only.

The built-in generator runs with each of:
- default: --settings (default: the schema defaults, config/schema.yaml);
- single: --single-settings, one over-segmentation and one similarity mix like the package
  (HSV, colour + texture + size + fill), at our working resolution;
- photos: --photo-settings (default: the `proposals` section of config/voc.yaml, the
  real-photo settings), on voc-mini only;
- photos_fast: the default setting at the photo setting's working size (384 px with
  voc.yaml), on voc-mini only: the setting recommended for photos in place of OpenCV's
  fast mode.
Settings are inline JSON of the `proposals` section or a workflow config YAML, completed
with the schema defaults. Times are CPU seconds of this process (time.process_time; the
machine may be shared, which inflates wall clock and, less, CPU time: compare ratios taken
in one run); wall clock is reported too. Verdict lines follow the JSON: default and single
against the goal of the issue (>= 10x faster than the package, CPU, at equal or better ABO),
then against every package run and the fastest one with ABO >= ours; photos against MCG's
class (ABO 0.6-0.7 in ~5-30 s). `--builtin-only` skips the package and OpenCV.

OpenCV's selective search (voc-mini only; --no-opencv skips it): createSelectiveSearch-
Segmentation with switchToSelectiveSearchFast() ("fast": HSV and Lab x k 150, 300, 450 x
two mixes, colour+fill+texture+size and fill+texture+size) or
switchToSelectiveSearchQuality() ("quality": HSV, Lab, grey, hue, rgI x k 150 to 750 x
those two mixes, fill alone and size alone), defaults, one thread (cv2.setNumThreads(1)),
on the image downscaled exactly as ours (PIL bilinear to the longest side = the working
size: 256 px for default, 384 px for photos and photos_fast), its boxes scaled back to the
image. It returns distinct boxes in its rank order; the first max_proposals (2000, as many
as ours keep) are evaluated and its full count is reported too (full_proposals_per_image).
Its time: resize, OpenCV and scaling; ours: propose and the masks' RLE at image resolution
(so ours pays for masks that it alone produces). Figures:
- box ABO, box recall@0.5/0.7 (box_abo, box_recall@t): each GT instance's box (that of its
  mask) against the proposals' boxes, box IoU (pycocotools), no void handling. Ours: the
  bounding boxes of our masks. OpenCV's own terms: the fair comparison, and the ABO of the
  last line;
- mask ABO, recall@t (abo, abo_top100, recall@t): as for ours above (void removed), with
  each OpenCV box as a filled mask, since the API gives no region masks: a weak stand-in
  that favours ours.
Verdict lines: each built-in setting (not single) against both modes at its working size;
the goal (issue 15): faster than OpenCV's fast mode at equal or better box ABO.

Measured 2026-12-03 (plain run, opencv-contrib-python-headless 5.1.0, 40 voc-mini images,
248 instances, CPU s/image, box ABO / box R@0.7, mask ABO): photos_fast 0.176 s, 0.612 /
0.37, 0.509 against OpenCV fast @384 px 0.316 s, 0.550 / 0.33, 0.416 (boxes filled): 1.8x
faster at +0.062 box ABO (speed_ratio=1.79); default 0.082 s, 0.588 against fast @256 px
0.129 s, 0.479: 1.6x at +0.109; photos (voc.yaml) 0.913 s, 0.644: 0.35x the speed of fast
@384, but 1.3x faster than quality @384 (1.186 s, 0.591). Details: docs/performance.md.

Measured (1 thread, --voc-images 50 --synthetic-images 50, CPU s/image, ABO, recall@0.7;
the machine shared with other jobs; ratios vary by about 10% between runs):
    voc-mini   package       1.234 s, ABO 0.334, R@0.7 0.07 (678 proposals per image)
               its defaults  3.496 s, ABO 0.413, R@0.7 0.06 (2675)
               @256 px       0.140 s, ABO 0.254; its defaults @256 px 0.251 s, ABO 0.336
               default 0.094 s, ABO 0.470, R@0.7 0.17 (1495): 13.1x faster than the package,
                   +0.136 (37x vs its defaults, +0.057; at 256 px 1.5x / 2.7x, +0.22 / +0.13)
               single  0.065 s, ABO 0.375, R@0.7 0.09 (373):  18.9x, +0.041 (at 256 px:
                   2.1x / 3.8x, +0.12 / +0.04; its defaults on the full image: ABO 0.413)
               photos  0.992 s, ABO 0.551, R@0.7 0.26 (1900): 1.2x, +0.217
    On all 199 train images, interleaved per image: default 0.088 s, ABO 0.522 against the
    package's 1.199 s, 0.349: 13.6x (the code and default of c3695c9, before
    coarse_downscale and the speedups: 0.137 s, ABO 0.525, 8.7x).
    synthetic  package 0.056 s, ABO 0.809 (its defaults 0.065 s, 0.823); default 0.026 s,
               ABO 0.918 (2.1x); single 0.025 s, ABO 0.851 (2.3x). On 128 px images one
               Felzenszwalb run (scikit-image, ~7 ms; ours does one per scale, the coarse one
               at 64 px) is a large share of the package's time and about a third of ours.
So the goal (>= 10x at equal or better ABO) holds against the package run as documented,
on the images as given: it segments them at full resolution, and its Python grouping grows
faster than linearly with the number of segments. Given our 256 px working image, the
package is 9-14x faster than on the full image and ours only 1.5-3.8x faster than it (at
much better ABO); no package run reaches the default's ABO. Both use scikit-image's
Felzenszwalb, which alone is about a third of our time at 256 px.
"""

import argparse
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from tag2mask.core import masks as mask_rle
from tag2mask.core.config import section_options
from tag2mask.proposals.builtin import ProposalSettings, propose
from tag2mask.proposals.quality import (
    THRESHOLDS,
    TOP,
    best_overlaps,
    image_figures,
    summarise,
)
from tag2mask.proposals.superpixels import upsample_labels

DEFAULT_VOC = REPO.parent / "shared" / "data" / "voc-mini"
# one grouping (one colour space, one scale, one similarity mix), like the package
SINGLE = {"builtin": {"colour_spaces": ["hsv"], "scales": [100], "strategies": ["CTSF"]}}
GOAL_SPEEDUP = 10.0
# OpenCV's selective search modes (cv2.ximgproc.segmentation)
OPENCV_MODES = {"fast": "switchToSelectiveSearchFast",
                "quality": "switchToSelectiveSearchQuality"}
# the built-in setting recommended for photographs where OpenCV's fast mode would be used:
# the final line compares it with OpenCV's fast mode at its working size
RECOMMENDED_PHOTOS = "photos_fast"


def synthetic_images(n, size=128, seed=0):
    """(id, rgb uint8, [GT RLE dict], None) for the first n train images of the project's
    synthetic dataset (tag2mask.dataset.synthetic: textured shapes on cluttered textured
    backgrounds, the demo's data)."""
    from tag2mask.dataset.synthetic import generate_image

    out = []
    for i in range(n):
        sample = generate_image(seed, "train", i, size)
        rles = [{"size": [size, size], "counts": mask_rle.encode(m).encode("ascii")}
                for m in sample.masks if m.any()]
        out.append((f"train_{i:05d}", sample.rgb, rles, None))
    return out


def voc_mini_images(root, n, split="train"):
    """(id, rgb, [GT RLE dict], void RLE dict or None) for the first n images of a VOC list."""
    voc = Path(root) / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
    out = []
    for image_id in ids:
        rgb = np.asarray(Image.open(voc / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        obj = np.asarray(Image.open(voc / "SegmentationObject" / f"{image_id}.png"))
        h, w = obj.shape
        inst = [obj == v for v in np.unique(obj) if v not in (0, 255)]
        rles = [{"size": [h, w], "counts": mask_rle.encode(m).encode("ascii")} for m in inst]
        void = obj == 255
        void_rle = ({"size": [h, w], "counts": mask_rle.encode(void).encode("ascii")}
                    if void.any() else None)
        out.append((image_id, rgb, rles, void_rle))
    return out


def resized(rgb, size):
    """RGB uint8 downscaled so its longest side is <= `size`, as ours does (PIL bilinear,
    tag2mask.proposals.superpixels.working_image); the image itself if already small enough."""
    h, w = rgb.shape[:2]
    if not size or max(h, w) <= size:
        return rgb
    shape = (max(1, round(w * size / max(h, w))), max(1, round(h * size / max(h, w))))
    return np.asarray(Image.fromarray(rgb).resize(shape, Image.Resampling.BILINEAR))


def box_best(boxes, gt_rles):
    """Best box IoU per GT instance (array of length G): the GT instance's box (that of its
    mask) against proposal boxes [N, 4] (x, y, w, h, image pixels). No void handling."""
    if not gt_rles:
        return np.zeros(0)
    if len(boxes) == 0:
        return np.zeros(len(gt_rles))
    gt_boxes = mask_utils.toBbox(gt_rles)
    iou = np.asarray(mask_utils.iou(np.asarray(boxes, np.float64), gt_boxes,
                                    [0] * len(gt_rles)))
    return iou.max(0)


def box_summary(best):
    best = np.asarray(best, np.float64)
    return {"box_abo": float(best.mean()) if len(best) else None,
            **{f"box_recall@{t}": (float((best >= t).mean()) if len(best) else None)
               for t in THRESHOLDS}}


def run_builtin(images, settings):
    """Ours: masks (propose + RLE at image resolution, timed), their figures, and the box
    figures of their bounding boxes (box_abo, box_recall@t; not timed)."""
    best, retrieved, top, boxes, n_props, seconds, cpu = [], [], [], [], [], [], []
    for image_id, rgb, gt, void in images:
        t, c = time.perf_counter(), time.process_time()
        props = propose(rgb, settings, image_id)
        counts = props.rle()
        seconds.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        h, w = rgb.shape[:2]
        b, r, t100 = image_figures(counts, gt, h, w, void, props.scores)
        best += b.tolist(); retrieved += r.tolist(); top += t100.tolist()
        rles = [{"size": [h, w], "counts": k.encode("ascii") if isinstance(k, str) else k}
                for k in counts]
        boxes += box_best(mask_utils.toBbox(rles) if rles else [], gt).tolist()
        n_props.append(len(counts))
    return {**summarise(best, retrieved, n_props, seconds, top),
            "cpu_seconds_per_image": float(np.mean(cpu)), **box_summary(boxes)}


def run_opencv(images, mode, size, top):
    """OpenCV's selective search (cv2.ximgproc.segmentation, `mode` fast|quality, one
    thread) on each image downscaled to `size` as ours (`resized`), its boxes scaled back to
    the image; the first `top` of its ranked boxes are kept. Timed: resize, OpenCV, scaling.
    Its mask figures use each box as a filled mask (it gives no masks; void removed as for
    ours), its box figures the boxes themselves."""
    import cv2  # pip install opencv-contrib-python-headless (benchmark only)
    cv2.setNumThreads(1)
    best, best_top, boxes_best, n_props, n_full, seconds, cpu = [], [], [], [], [], [], []
    for _, rgb, gt, void in images:
        t, c = time.perf_counter(), time.process_time()
        h, w = rgb.shape[:2]
        small = resized(rgb, size)
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(np.ascontiguousarray(small[:, :, ::-1]))  # OpenCV wants BGR
        getattr(ss, OPENCV_MODES[mode])()
        rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)  # x, y, w, h; ranked
        scale = np.array([w / small.shape[1], h / small.shape[0]] * 2)
        boxes = rects[:top] * scale
        seconds.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        masks = mask_utils.frPyObjects(boxes, h, w) if len(boxes) else []  # filled boxes
        if gt:
            iou = best_overlaps(masks, gt, h, w, void)
            best += (iou.max(0) if len(masks) else np.zeros(len(gt))).tolist()
            best_top += (iou[:TOP].max(0) if len(masks) else np.zeros(len(gt))).tolist()
        boxes_best += box_best(boxes, gt).tolist()
        n_props.append(len(boxes)); n_full.append(len(rects))
    out = {**summarise(best, [], n_props, seconds, best_top),
           "cpu_seconds_per_image": float(np.mean(cpu)), **box_summary(boxes_best),
           "full_proposals_per_image": float(np.mean(n_full))}
    out.pop("point_retrieval_miou")  # box masks cover any interior point: not meaningful
    return out


def run_selectivesearch(images, scale=500, sigma=0.9, min_size=10, size=None):
    """The package on each image, or (`size`) on it downscaled so its longest side is
    `size` as ours does (PIL bilinear), its label map then upsampled to the image (nearest)
    so that its masks are at image resolution; resizing counts as its time."""
    import selectivesearch  # pip install selectivesearch (benchmark only)
    best, n_props, seconds, cpu = [], [], [], []
    for image_id, rgb, gt, void in images:
        t, c = time.perf_counter(), time.process_time()
        h, w = rgb.shape[:2]
        small = resized(rgb, size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labelled, regions = selectivesearch.selective_search(
                small, scale=scale, sigma=sigma, min_size=min_size)
        label_map = upsample_labels(labelled[:, :, 3].astype(np.int64), h, w)
        n_labels = int(label_map.max()) + 1
        # masks exactly from each region's segment labels (membership matrix, one indexing)
        member = np.zeros((len(regions), n_labels), bool)
        for i, r in enumerate(regions):
            member[i, np.asarray(r["labels"], np.int64)] = True
        member = np.unique(member, axis=0)  # the package returns duplicates
        counts = mask_rle.encode_label_unions(member, label_map)
        seconds.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        b, _, _ = image_figures(counts, gt, rgb.shape[0], rgb.shape[1], void)
        best += b.tolist(); n_props.append(len(counts))
    out = {**summarise(best, [], n_props, seconds), "cpu_seconds_per_image": float(np.mean(cpu))}
    out.pop("point_retrieval_miou")  # its regions carry no ranking
    out.pop("abo_top100")
    return out


def settings_of(source):
    """The generator's settings of `proposals` options (inline JSON or a config YAML) with
    schema defaults: proposals.builtin and max_proposals, as one flat dict."""
    options = section_options(source, "proposals")
    return {**options["builtin"], "max_proposals": options["max_proposals"]}


def package_runs(args, set_name, images, working_size):
    """Named selectivesearch configurations for one image set: its README values on the
    image (the goal's comparison), its function defaults, and both on the image downscaled
    to our working size (the same resolution as ours; only where images are larger)."""
    scale = args.ss_scale_synthetic if set_name == "synthetic" else args.ss_scale
    runs = {"selectivesearch": {"scale": scale, "sigma": 0.9, "min_size": 10}}
    if args.ss_variants:
        runs["selectivesearch_defaults"] = {"scale": 1.0, "sigma": 0.8, "min_size": 50}
        if any(max(rgb.shape[:2]) > working_size for _, rgb, _, _ in images):
            for name in list(runs):
                runs[f"{name}@{working_size}"] = {**runs[name], "size": working_size}
    return runs


def runs_verdict(set_name, name, ours, packages):
    """Ours against every package run (CPU ratio, ABO difference), and against the fastest
    run with ABO >= ours, if any."""
    ratio = {k: v["cpu_seconds_per_image"] / ours["cpu_seconds_per_image"]
             for k, v in packages.items()}
    listed = ", ".join(f"{k} {ratio[k]:.1f}x {ours['abo'] - v['abo']:+.3f}"
                       for k, v in packages.items())
    at_least = [k for k, v in packages.items() if v["abo"] >= ours["abo"]]
    fastest = (f"{min(at_least, key=ratio.get)} ({min(ratio[k] for k in at_least):.1f}x)"
               if at_least else "none")
    return (f"{set_name:9s} {name:8s} vs each package run (CPU ratio, ABO difference): "
            f"{listed}; fastest run with ABO >= ours: {fastest}")


def verdict(set_name, name, ours, ss):
    speedup = ss["cpu_seconds_per_image"] / ours["cpu_seconds_per_image"]
    diff = ours["abo"] - ss["abo"]
    met = speedup >= GOAL_SPEEDUP and diff >= 0
    return (f"{set_name:9s} {name:8s} {speedup:5.1f}x faster "
            f"(CPU s/image {ours['cpu_seconds_per_image']:.3f}"
            f" vs {ss['cpu_seconds_per_image']:.3f}), ABO {ours['abo']:.3f} vs {ss['abo']:.3f}"
            f" ({diff:+.3f}): {'meets' if met else 'does NOT meet'} the goal (>= {GOAL_SPEEDUP:g}x"
            " at equal or better ABO)")


def photo_verdict(set_name, ours, ss):
    return (f"{set_name:9s} photos   ABO {ours['abo']:.3f} "
            f"(recall@0.7 {ours['recall@0.7']:.2f}) in "
            f"{ours['cpu_seconds_per_image']:.2f} CPU s/image; package ABO {ss['abo']:.3f} in "
            f"{ss['cpu_seconds_per_image']:.2f} s; MCG's class: ABO 0.6-0.7 in ~5-30 s")


def opencv_runs(settings):
    """OpenCV runs per built-in setting on voc-mini: {setting: {run name: run_opencv kw}},
    each mode at that setting's working size and with its max_proposals as the top N.
    Settings of equal working size share the runs."""
    runs = {}
    for name, st in settings.items():
        if name == "single":  # the package's comparison only
            continue
        top = ("" if st.max_proposals == ProposalSettings.max_proposals
               else f"_top{st.max_proposals}")
        runs[name] = {f"opencv_{mode}@{st.working_size}{top}": {
            "mode": mode, "size": st.working_size, "top": st.max_proposals}
            for mode in OPENCV_MODES}
    return runs


def opencv_verdict(name, ours, run, other):
    """Ours against one OpenCV run at our working size: CPU ratio, box and mask ABO,
    recall@0.7; for its fast mode, the goal (faster at equal or better box ABO)."""
    speedup = other["cpu_seconds_per_image"] / ours["cpu_seconds_per_image"]
    line = (f"voc-mini  {name:11s} vs {run}: CPU time ratio {speedup:.2f} (its / ours; "
            f"CPU s/image {ours['cpu_seconds_per_image']:.3f} vs "
            f"{other['cpu_seconds_per_image']:.3f}); "
            f"box ABO {ours['box_abo']:.3f} vs {other['box_abo']:.3f} "
            f"({ours['box_abo'] - other['box_abo']:+.3f}), box R@0.7 "
            f"{ours['box_recall@0.7']:.2f} vs {other['box_recall@0.7']:.2f}; mask ABO "
            f"{ours['abo']:.3f} vs {other['abo']:.3f} (its boxes filled), mask R@0.7 "
            f"{ours['recall@0.7']:.2f} vs {other['recall@0.7']:.2f}; "
            f"{other['proposals_per_image']:.0f} of its {other['full_proposals_per_image']:.0f}"
            f" boxes per image kept (ours {ours['proposals_per_image']:.0f})")
    if other["mode"] == "fast":
        met = speedup > 1 and ours["box_abo"] >= other["box_abo"]
        line += (f": {'meets' if met else 'does NOT meet'} the goal (faster than its fast mode"
                 " at equal or better box ABO)")
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--voc-root", type=Path, default=DEFAULT_VOC)
    p.add_argument("--voc-images", type=int, default=40)
    p.add_argument("--voc-split", default="train")
    p.add_argument("--synthetic-images", type=int, default=20)
    p.add_argument("--settings", default="{}",
                   help="built-in generator settings: inline JSON of the `proposals` section or "
                        "a workflow config YAML (default: the schema defaults)")
    p.add_argument("--single-settings", default=json.dumps(SINGLE),
                   help="a single-strategy built-in setting, like the package's")
    p.add_argument("--photo-settings", default=str(REPO / "config" / "voc.yaml"),
                   help="the real-photo setting, run on voc-mini ('' to skip)")
    p.add_argument("--ss-scale", type=float, default=500,
                   help="selectivesearch Felzenszwalb scale on voc-mini (its README value)")
    p.add_argument("--ss-scale-synthetic", type=float, default=100,
                   help="selectivesearch scale on the 128 px synthetic images (500 leaves "
                        "about 40 regions per image there)")
    p.add_argument("--no-ss-variants", dest="ss_variants", action="store_false",
                   help="run the package only with its README values on the full image")
    p.add_argument("--no-opencv", dest="opencv", action="store_false",
                   help="skip OpenCV's selective search (voc-mini rows)")
    p.add_argument("--recommended", default=RECOMMENDED_PHOTOS,
                   help="the built-in setting (default, photos_fast or photos) the last line "
                        "compares with OpenCV's fast mode at its working size")
    p.add_argument("--builtin-only", action="store_true",
                   help="skip both the selectivesearch package and OpenCV")
    args = p.parse_args(argv)
    options = {"default": settings_of(args.settings),
               "single": settings_of(args.single_settings)}
    if args.photo_settings:
        options["photos"] = settings_of(args.photo_settings)
        # the default setting at the photo setting's working size
        options["photos_fast"] = {**options["default"],
                                  "working_size": options["photos"]["working_size"]}
    settings = {k: ProposalSettings.from_options(v) for k, v in options.items()}
    if args.recommended == RECOMMENDED_PHOTOS and "photos" not in settings:
        args.recommended = "default"  # --photo-settings ''
    if args.recommended not in opencv_runs(settings):
        p.error(f"--recommended {args.recommended!r}: not one of {list(opencv_runs(settings))}")
    sets = {"synthetic": synthetic_images(args.synthetic_images)}
    if args.voc_images and (args.voc_root / "VOC2012").is_dir():
        sets["voc-mini"] = voc_mini_images(args.voc_root, args.voc_images, args.voc_split)
    report = {"settings": {k: v.__dict__ for k, v in settings.items()}, "sets": {}}
    verdicts = []
    use_package = not args.builtin_only
    if use_package and importlib.util.find_spec("selectivesearch") is None:
        use_package = False
        verdicts.append("selectivesearch is not installed: its rows are skipped "
                        "(pip install selectivesearch)")
    opencv_line = None
    if args.builtin_only or not args.opencv:
        opencv_line = "skipped (--builtin-only or --no-opencv)"
    elif "voc-mini" not in sets:
        opencv_line = f"skipped (voc-mini not found at {args.voc_root}, or --voc-images 0)"
    elif importlib.util.find_spec("cv2") is None:
        opencv_line = ("skipped (OpenCV not installed: pip install "
                       "opencv-contrib-python-headless, or the bench extra)")
    for set_name, images in sets.items():
        entry = {"images": len(images)}
        for name, st in settings.items():
            if name.startswith("photos") and set_name != "voc-mini":
                continue
            entry[name] = run_builtin(images, st)
        if set_name == "voc-mini" and opencv_line is None:
            runs = opencv_runs(settings)
            for name in runs:
                for run, kw in runs[name].items():
                    if run not in entry:
                        entry[run] = {**kw, **run_opencv(images, **kw)}
                    verdicts.append(opencv_verdict(name, entry[name], run, entry[run]))
            ours = entry[args.recommended]
            fast = entry[next(iter(runs[args.recommended]))]  # its fast mode
            ratio = fast["cpu_seconds_per_image"] / ours["cpu_seconds_per_image"]
            opencv_line = (f"speed_ratio={ratio:.2f} abo_ours={ours['box_abo']:.3f} "
                           f"abo_opencv={fast['box_abo']:.3f}")
        if use_package:
            packages = {}
            for run, kw in package_runs(args, set_name, images,
                                        settings["default"].working_size).items():
                packages[run] = entry[run] = {**kw, **run_selectivesearch(images, **kw)}
            ss = packages["selectivesearch"]
            for name in settings:
                if name not in entry:
                    continue
                ours = entry[name]
                for run, other in packages.items():
                    entry[f"{name}_vs_{run}"] = {
                        "speedup_wall": other["seconds_per_image"] / ours["seconds_per_image"],
                        "speedup_cpu": (other["cpu_seconds_per_image"]
                                        / ours["cpu_seconds_per_image"]),
                        "abo_difference": ours["abo"] - other["abo"]}
                verdicts.append(photo_verdict(set_name, ours, ss) if name == "photos"
                                else verdict(set_name, name, ours, ss))
                if name != "photos" and len(packages) > 1:
                    verdicts.append(runs_verdict(set_name, name, ours, packages))
        report["sets"][set_name] = entry
    print(json.dumps(report, indent=1, default=list))
    for line in verdicts:
        print(line)
    print(f"proposals_vs_opencv: {opencv_line}")


if __name__ == "__main__":
    main()
