"""Statistics and generation time of the built-in synthetic dataset.

    python benchmarks/synthetic_stats.py [--images 200] [--size 128] [--seed 0]
        [--min-instances 1] [--max-instances 6]

Generates `--images` train images in memory (no files), times it, and prints JSON with:
instances per image (histogram), per-class image frequency, object extent quantiles (largest
side of the visible part over the image side), share of multi-instance images whose instances
touch or overlap, share of instances in contact with a later-drawn one, and the colour-only
baselines of `colour_shortcuts` (tests/synthetic_difficulty.py; chance: 1/6 for the class
accuracy, 0.5 for the thresholds).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workflow"), str(REPO / "tests")]
from synthetic_difficulty import colour_shortcuts  # noqa: E402

from tag2mask.dataset import synthetic  # noqa: E402


def touching(masks):
    grown = [binary_dilation(m) for m in masks]
    return any((grown[i] & masks[j]).any()
               for i in range(len(masks)) for j in range(len(masks)) if i != j)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-instances", type=int, default=1)
    p.add_argument("--max-instances", type=int, default=6)
    args = p.parse_args()

    start = time.perf_counter()
    samples = [synthetic.generate_image(args.seed, "train", i, args.size, args.min_instances,
                                        args.max_instances) for i in range(args.images)]
    seconds = time.perf_counter() - start

    counts = np.array([len(s.classes) for s in samples])
    present = np.zeros((len(samples), len(synthetic.CLASSES)), bool)
    for i, s in enumerate(samples):
        present[i, s.classes] = True
    extents = []
    for s in samples:
        for m in s.masks:
            ys, xs = np.nonzero(m)
            extents.append((max(np.ptp(ys), np.ptp(xs)) + 1) / args.size)
    several = [s for s in samples if len(s.classes) >= 2]
    # instances in contact with one drawn later (on top of them): those are the ones a later
    # instance may occlude (the visible masks alone cannot tell how much was hidden)
    occluded = sum(
        int((binary_dilation(m) & s.masks[j + 1:].any(axis=0)).any())
        for s in samples for j, m in enumerate(s.masks))
    print(json.dumps({
        "images": args.images, "size": args.size, "seed": args.seed,
        "seconds": round(seconds, 3), "ms_per_image": round(1000 * seconds / args.images, 2),
        "instances_per_image": {int(k): int(v) for k, v in
                                zip(*np.unique(counts, return_counts=True))},
        "mean_instances": round(float(counts.mean()), 2),
        "class_image_frequency": dict(zip(synthetic.CLASSES,
                                          np.round(present.mean(axis=0), 3).tolist())),
        "extent_quantiles_5_25_50_75_95": np.round(
            np.percentile(extents, [5, 25, 50, 75, 95]), 3).tolist(),
        "touching_images_share": round(sum(touching(s.masks) for s in several)
                                       / max(len(several), 1), 3),
        "instances_bordering_a_later_one_share": round(occluded / counts.sum(), 3),
        "colour_shortcuts": {k: round(v, 3) for k, v in
                             colour_shortcuts(samples).items()},
    }, indent=1))


if __name__ == "__main__":
    main()
