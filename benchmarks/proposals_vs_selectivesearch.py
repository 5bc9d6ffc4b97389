"""Benchmark: built-in proposals (tag2mask.proposals) vs the `selectivesearch` PyPI package.

Speed (CPU seconds per image) and mask quality (ABO, recall@0.5/0.7 against GT instances) on
the same images: the project's synthetic images (textured shapes on cluttered textured
backgrounds, 128 px, as in the demo) and, when present, voc-mini photographs (train list, GT
from SegmentationObject, void pixels removed from proposals before the IoU).

`selectivesearch` is not a tag2mask dependency. Install it into the venv for this script only:

    .venv/bin/pip install selectivesearch
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/proposals_vs_selectivesearch.py --voc-images 50

It returns, per region, a box and the list of its Felzenszwalb segment labels, plus the
label map; its masks here are built exactly from those labels (not from filled boxes), with
the same RLE writer as ours, and that time counts as its. It runs single-strategy selective
search (HSV colour + LBP texture + size + fill) on the full image with sigma=0.9,
min_size=10 and scale=500 (its README example) on voc-mini, 100 on the 128 px synthetic images.

The built-in generator runs with each of:
- default: --settings (default: the schema defaults, config/schema.yaml);
- single: --single-settings, one over-segmentation and one similarity mix like the package
  (HSV, colour + texture + size + fill), at our working resolution;
- photos: --photo-settings (default: the `proposals` section of config/voc.yaml, the
  real-photo settings), on voc-mini only.
Settings are inline JSON of the `proposals` section or a workflow config YAML, completed
with the schema defaults. Times are CPU seconds of this process (time.process_time; the
machine may be shared, which inflates wall clock); wall clock is reported too. Verdict lines
follow the JSON: default and single against the goal of the issue (>= 10x faster than the
package, CPU, at equal or better ABO); photos against MCG's class (ABO 0.6-0.7 in ~5-30 s).
`--builtin-only` skips the package.

Measured (1 thread, --voc-images 50 --synthetic-images 50, CPU s/image; runs vary by ~5%):
    voc-mini   package 1.191 s, ABO 0.334, recall@0.7 0.07 (678 proposals per image)
               default 0.122 s, ABO 0.477, recall@0.7 0.18:  9.7x faster, +0.143
               single  0.067 s, ABO 0.375, recall@0.7 0.09: 17.9x faster, +0.041
               photos  1.000 s, ABO 0.551, recall@0.7 0.26:  1.2x faster, +0.217
    synthetic  package 0.051 s, ABO 0.809; default 0.034 s, ABO 0.917 (1.5x);
               single 0.023 s, ABO 0.851 (2.2x). On 128 px images one Felzenszwalb run
               (scikit-image, ~10 ms; ours does one per scale) is most of the package's time.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from tag2mask import masks as mask_rle  # noqa: E402
from tag2mask.config import section_options  # noqa: E402
from tag2mask.proposals import ProposalSettings, members_to_rle, propose  # noqa: E402
from tag2mask.proposals_quality import image_figures, summarise  # noqa: E402

DEFAULT_VOC = REPO.parent / "shared" / "data" / "voc-mini"
# one grouping (one colour space, one scale, one similarity mix), like the package
SINGLE = {"colour_spaces": ["hsv"], "scales": [100], "strategies": ["CTSF"]}
GOAL_SPEEDUP = 10.0


def synthetic_images(n, size=128, seed=0):
    """(id, rgb uint8, [GT RLE dict], None) for the first n train images of the project's
    synthetic dataset (tag2mask.datasets.synthetic: textured shapes on cluttered textured
    backgrounds, the demo's data)."""
    from tag2mask.datasets.synthetic import generate_image

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


def run_builtin(images, settings):
    best, retrieved, top, n_props, seconds, cpu = [], [], [], [], [], []
    for image_id, rgb, gt, void in images:
        t, c = time.perf_counter(), time.process_time()
        props = propose(rgb, settings, image_id)
        counts = props.rle()
        seconds.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        b, r, t100 = image_figures(counts, gt, rgb.shape[0], rgb.shape[1], void, props.scores)
        best += b.tolist(); retrieved += r.tolist(); top += t100.tolist()
        n_props.append(len(counts))
    return {**summarise(best, retrieved, n_props, seconds, top),
            "cpu_seconds_per_image": float(np.mean(cpu))}


def run_selectivesearch(images, scale=500, sigma=0.9, min_size=10):
    import selectivesearch  # pip install selectivesearch (benchmark only)
    best, n_props, seconds, cpu = [], [], [], []
    for image_id, rgb, gt, void in images:
        t, c = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labelled, regions = selectivesearch.selective_search(
                rgb, scale=scale, sigma=sigma, min_size=min_size)
        label_map = labelled[:, :, 3].astype(np.int64)
        n_labels = int(label_map.max()) + 1
        # masks exactly from each region's segment labels (membership matrix, one indexing)
        member = np.zeros((len(regions), n_labels), bool)
        for i, r in enumerate(regions):
            member[i, np.asarray(r["labels"], np.int64)] = True
        member = np.unique(member, axis=0)  # the package returns duplicates
        counts = members_to_rle(member, label_map)
        seconds.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        b, _, _ = image_figures(counts, gt, rgb.shape[0], rgb.shape[1], void)
        best += b.tolist(); n_props.append(len(counts))
    out = {**summarise(best, [], n_props, seconds), "cpu_seconds_per_image": float(np.mean(cpu))}
    out.pop("point_retrieval_miou")  # its regions carry no ranking
    out.pop("abo_top100")
    return out


def settings_of(source):
    """The `proposals` options (inline JSON or a config YAML) with schema defaults."""
    return section_options(source, "proposals")


def verdict(set_name, name, ours, ss):
    speedup = ss["cpu_seconds_per_image"] / ours["cpu_seconds_per_image"]
    diff = ours["abo"] - ss["abo"]
    met = speedup >= GOAL_SPEEDUP and diff >= 0
    return (f"{set_name:9s} {name:8s} {speedup:5.1f}x faster (CPU s/image {ours['cpu_seconds_per_image']:.3f}"
            f" vs {ss['cpu_seconds_per_image']:.3f}), ABO {ours['abo']:.3f} vs {ss['abo']:.3f}"
            f" ({diff:+.3f}): {'meets' if met else 'does NOT meet'} the goal (>= {GOAL_SPEEDUP:g}x"
            " at equal or better ABO)")


def photo_verdict(set_name, ours, ss):
    return (f"{set_name:9s} photos   ABO {ours['abo']:.3f} (recall@0.7 {ours['recall@0.7']:.2f}) in "
            f"{ours['cpu_seconds_per_image']:.2f} CPU s/image; package ABO {ss['abo']:.3f} in "
            f"{ss['cpu_seconds_per_image']:.2f} s; MCG's class: ABO 0.6-0.7 in ~5-30 s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--voc-root", type=Path, default=DEFAULT_VOC)
    p.add_argument("--voc-images", type=int, default=20)
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
    p.add_argument("--builtin-only", action="store_true")
    args = p.parse_args(argv)
    options = {"default": settings_of(args.settings),
               "single": settings_of(args.single_settings)}
    if args.photo_settings:
        options["photos"] = settings_of(args.photo_settings)
    settings = {k: ProposalSettings.from_options(v) for k, v in options.items()}
    sets = {"synthetic": synthetic_images(args.synthetic_images)}
    if args.voc_images and (args.voc_root / "VOC2012").is_dir():
        sets["voc-mini"] = voc_mini_images(args.voc_root, args.voc_images, args.voc_split)
    report = {"settings": {k: v.__dict__ for k, v in settings.items()}, "sets": {}}
    verdicts = []
    for set_name, images in sets.items():
        entry = {"images": len(images)}
        for name, st in settings.items():
            if name == "photos" and set_name != "voc-mini":
                continue
            entry[name] = run_builtin(images, st)
        if not args.builtin_only:
            scale = args.ss_scale_synthetic if set_name == "synthetic" else args.ss_scale
            ss = run_selectivesearch(images, scale=scale)
            entry["selectivesearch"] = {"scale": scale, **ss}
            for name in settings:
                if name not in entry:
                    continue
                ours = entry[name]
                entry[f"{name}_vs_selectivesearch"] = {
                    "speedup_wall": ss["seconds_per_image"] / ours["seconds_per_image"],
                    "speedup_cpu": ss["cpu_seconds_per_image"] / ours["cpu_seconds_per_image"],
                    "abo_difference": ours["abo"] - ss["abo"]}
                verdicts.append(photo_verdict(set_name, ours, ss) if name == "photos"
                                else verdict(set_name, name, ours, ss))
        report["sets"][set_name] = entry
    print(json.dumps(report, indent=1, default=list))
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
