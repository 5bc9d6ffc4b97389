"""Benchmark: vectorised proposal retrieval vs a per-peak, per-proposal Python loop.

Both get the same working-resolution inputs (tag2mask.retrieval.working.prepare_image) and
must make the same choices (asserted): proposal per peak, kept instances, merges, confidences. Timed:

* vectorised = `select` (contours by separable bool filters, scores by matrix products, NMS)
* loop       = `select_reference_loop` (tests/retrieval_reference.py: each contour with
               scipy.ndimage, each score with 2-D sums)
* prepare    = decoding the RLE proposals and downsampling them and the maps (shared by both;
               reported so the per-image total is visible)

Times are medians; both wall-clock and process CPU time are given (on a shared machine wall
time includes waiting for a core; the speed-up is computed from CPU time, with torch and BLAS
on one thread).

    .venv/bin/python benchmarks/retrieval_vectorised.py [--proposals 500 --peaks 10 ...]

Prints one JSON object.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workflow"), str(REPO / "tests")]

from retrieval_reference import select_reference_loop  # noqa: E402

from tag2mask.core import masks as mask_rle  # noqa: E402
from tag2mask.core.config import section_options  # noqa: E402
from tag2mask.retrieval.select import select  # noqa: E402
from tag2mask.retrieval.working import prepare_image  # noqa: E402


def ellipses(rng, n, shape, min_r, max_r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cy, cx = rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n)
    ry, rx = rng.uniform(min_r, max_r, n), rng.uniform(min_r, max_r, n)
    return (((yy - cy[:, None, None]) / ry[:, None, None]) ** 2
            + ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2) < 1


def make_image(rng, n_props, n_peaks, height, width, map_size, n_classes=3):
    """Proposals of many sizes; peaks with smooth response maps on a few objects."""
    props = ellipses(rng, n_props, (height, width), 4, max(height, width) / 2)
    scale = map_size / max(height, width)
    mh, mw = round(height * scale), round(width * scale)
    yy, xx = np.mgrid[:mh, :mw]
    cy, cx = rng.uniform(0, mh, n_peaks), rng.uniform(0, mw, n_peaks)
    sigma = rng.uniform(2, mh / 6, n_peaks)
    resp = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
                  / (2 * sigma[:, None, None] ** 2))
    resp /= resp.sum((1, 2), keepdims=True)
    classes = rng.integers(0, n_classes, n_peaks)
    class_maps = rng.normal(0, 1, (n_classes, mh, mw)) + 4 * np.stack(
        [resp[classes == c].sum(0) * mh * mw / max(1, (classes == c).sum()) for c in
         range(n_classes)])
    peaks = {"peak_class": classes.astype(np.int16),
             "peak_yx": np.stack([cy / scale, cx / scale], 1).astype(np.float32),
             "peak_value": rng.normal(1, 1, n_peaks).astype(np.float32),
             "response_maps": resp.astype(np.float16),
             "map_classes": np.arange(n_classes, dtype=np.int16),
             "class_maps": class_maps.astype(np.float16)}
    return peaks, mask_rle.encode(props), rng.random(n_props).astype(np.float32)


def timed(fn, repeats):
    """(result, median wall seconds, median CPU seconds)."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return out, float(np.median(wall)), float(np.median(cpu))


def same(a, b):
    ok = b.proposal >= 0
    return (a.proposal.tolist() == b.proposal.tolist()
            and np.allclose(a.score[ok], b.score[ok], rtol=1e-4, atol=1e-6)
            and a.kept.tolist() == b.kept.tolist()
            and a.merged_into.tolist() == b.merged_into.tolist()
            and np.allclose(a.confidence, b.confidence, rtol=1e-4, atol=1e-7))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proposals", type=int, default=500)
    p.add_argument("--peaks", type=int, default=10)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--map-size", type=int, default=112, help="longest side of the stored maps")
    p.add_argument("--working-size", type=int, default=128)
    p.add_argument("--images", type=int, default=3, help="random images (seeds) compared")
    p.add_argument("--repeats", type=int, default=5, help="timings of the vectorised path")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    results = {}
    for method in ("prm", "wise"):
        o = {**section_options("{}", "retrieval"), "method": method,
             "working_size": args.working_size, "top_proposals": None}
        t = {k: [] for k in ("prep_wall", "prep_cpu", "vec_wall", "vec_cpu", "loop_wall",
                             "loop_cpu")}
        instances, all_same = [], True
        for seed in range(args.images):
            rng = np.random.default_rng(seed)
            peaks, counts, objectness = make_image(rng, args.proposals, args.peaks, args.height,
                                                   args.width, args.map_size)
            inp, *prep = timed(lambda: prepare_image(peaks, counts, objectness, args.height,
                                                     args.width, o), 1)
            vec, *vec_t = timed(lambda: select(inp, o), args.repeats)
            loop, *loop_t = timed(lambda: select_reference_loop(inp, o), 1)
            all_same &= same(vec, loop)
            for name, (wall, cpu) in (("prep", prep), ("vec", vec_t), ("loop", loop_t)):
                t[f"{name}_wall"].append(wall)
                t[f"{name}_cpu"].append(cpu)
            instances.append(len(vec.kept))
        assert all_same, f"{method}: vectorised and loop selections differ"
        m = {k: float(np.mean(v)) for k, v in t.items()}
        results[method] = {
            "same_selection": bool(all_same),
            "vectorised_cpu_s": round(m["vec_cpu"], 5),
            "loop_cpu_s": round(m["loop_cpu"], 4),
            "speedup_cpu": round(m["loop_cpu"] / m["vec_cpu"], 1),
            "vectorised_wall_s": round(m["vec_wall"], 5),
            "loop_wall_s": round(m["loop_wall"], 4),
            "speedup_wall": round(m["loop_wall"] / m["vec_wall"], 1),
            "prepare_cpu_s": round(m["prep_cpu"], 4),
            "per_image_total_cpu_s": round(m["prep_cpu"] + m["vec_cpu"], 4),
            "instances_per_image": float(np.mean(instances)),
        }
    print(json.dumps({
        "benchmark": "retrieval_vectorised",
        "settings": {"proposals": args.proposals, "peaks": args.peaks,
                     "image": [args.height, args.width], "map_size": args.map_size,
                     "working_size": args.working_size, "images": args.images,
                     "threads": args.threads, "torch": torch.__version__,
                     "machine": platform.machine()},
        "results": results}, indent=1))


if __name__ == "__main__":
    main()
