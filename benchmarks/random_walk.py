"""Benchmark: IRNet's random walk with a sparse transition matrix vs the dense reference.

The walk (tag2mask.irnet.random_walk) on a constructed 512 x 512 image at stride 4 (a 128 x 128
grid, 16,384 cells): a boundary map with several closed object outlines (plus faint noise) and
one CAM-like seed blob per object. Both versions walk the same seeds on the same affinities
((1 - max boundary on the line)^beta within the radius) for the same number of steps:

* sparse = `random_walk`: scipy CSR, 2 D + 1 entries per row, memory linear in the cells
* dense  = `dense_random_walk`: the n x n float32 matrix IRNet builds (1 GiB here), the same
           steps as dense products (with --dense-square: IRNet's repeated squaring of T, n^3
           per squaring, minutes to hours on a CPU)

Each runs in its own process; memory is that process's peak resident set above its resident
set before the walk (inputs built, modules imported), time the walk's wall time (matrix
construction included). Labels: per cell the seed with the highest walked score, background
where none reaches bg_score of the overall maximum (as tag2mask.irnet.instances); agreement
is the share of cells with the same label.

    .venv/bin/python benchmarks/random_walk.py [--size 512 --stride 4 --objects 6 ...]

Prints one JSON object, then the line
`random_walk: memory_ratio=X time_ratio=Y agreement=Z` (ratios dense / sparse).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from tag2mask.irnet.random_walk import dense_random_walk, random_walk


def constructed_inputs(grid, objects, seed):
    """(boundary float32 [grid, grid], seeds float32 [objects, grid, grid]): ellipse outlines
    two cells thick (boundary 0.9) over noise up to 0.05, a Gaussian seed inside each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:grid, :grid].astype(np.float64)
    boundary = (rng.random((grid, grid)) * 0.05).astype(np.float32)
    seeds = np.zeros((objects, grid, grid), np.float32)
    for k in range(objects):
        cy, cx = rng.uniform(0.2, 0.8, 2) * grid
        ry, rx = rng.uniform(0.08, 0.2, 2) * grid
        d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        ring = (d >= 1) & (d < 1 + 2.0 / min(ry, rx))
        boundary[ring] = np.maximum(boundary[ring], 0.9)
        seeds[k] = np.exp(-(d ** 2) / 0.3) * (d < 1)
    return boundary, seeds


def labels(walked, bg_score):
    if walked.max() > 0:
        walked = walked / walked.max()
    best = walked.argmax(0)
    return np.where(walked.max(0) >= bg_score, best, -1)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args):
    """Run one method in this process; write its labels and print its figures as JSON."""
    boundary, seeds = constructed_inputs(args.size // args.stride, args.objects, args.seed)
    before = rss_mb()
    t0 = time.perf_counter()
    if args.method == "sparse":
        walked = random_walk(seeds, boundary, args.radius, args.beta, args.steps)
    else:
        walked = dense_random_walk(seeds, boundary, args.radius, args.beta, args.steps,
                                   square=args.dense_square)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    np.save(args.labels_out, labels(walked, args.bg_score))
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "before_mb": before,
                      "memory_mb": peak - before}))


def run_child(method, args, labels_path):
    cmd = [sys.executable, __file__, "--child", method, "--labels-out", labels_path,
           "--size", str(args.size), "--stride", str(args.stride), "--objects",
           str(args.objects), "--seed", str(args.seed), "--radius", str(args.radius),
           "--beta", str(args.beta), "--steps", str(args.steps), "--bg-score",
           str(args.bg_score)] + (["--dense-square"] if args.dense_square else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "OPENBLAS_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    p.add_argument("--stride", type=int, default=4, help="grid stride (4)")
    p.add_argument("--objects", type=int, default=6, help="objects (seed maps) (6)")
    p.add_argument("--radius", type=float, default=5, help="walk radius in cells (5)")
    p.add_argument("--beta", type=float, default=10, help="affinity exponent (10)")
    p.add_argument("--steps", type=int, default=256, help="walk steps (256)")
    p.add_argument("--bg-score", type=float, default=0.25, help="background threshold (0.25)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs (0)")
    p.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP threads (1)")
    p.add_argument("--dense-square", action="store_true",
                   help="dense reference by repeated squaring (IRNet's way; very slow on CPU)")
    p.add_argument("--child", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.method = args.child
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sparse = run_child("sparse", args, f"{tmp}/sparse.npy")
        dense = run_child("dense", args, f"{tmp}/dense.npy")
        a, b = np.load(f"{tmp}/sparse.npy"), np.load(f"{tmp}/dense.npy")
    grid = args.size // args.stride
    agreement = float((a == b).mean())
    memory_ratio = dense["memory_mb"] / max(sparse["memory_mb"], 1e-3)
    time_ratio = dense["seconds"] / max(sparse["seconds"], 1e-9)
    print(json.dumps({
        "benchmark": "random_walk",
        "settings": {"image": args.size, "stride": args.stride, "cells": grid * grid,
                     "objects": args.objects, "radius": args.radius, "beta": args.beta,
                     "steps": args.steps, "threads": args.threads,
                     "dense": "repeated squaring" if args.dense_square else "dense products"},
        "sparse": {k: round(v, 3) for k, v in sparse.items()},
        "dense": {k: round(v, 3) for k, v in dense.items()},
        "labelled_cells": {"sparse": int((a >= 0).sum()), "dense": int((b >= 0).sum())},
        "agreement": round(agreement, 5)}, indent=1))
    print(f"random_walk: memory_ratio={memory_ratio:.1f} time_ratio={time_ratio:.2f} "
          f"agreement={agreement:.4f}")


if __name__ == "__main__":
    main()
