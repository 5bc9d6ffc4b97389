"""Benchmark: what Segment Anything costs per image, for docs/sam.md.

    PYTHONPATH=workflow python benchmarks/sam_cost.py [--types tiny vit_b] [--threads 2]
        [--prompts 64] [--side 1024x768]

For each model type (the published architectures vit_b / vit_l / vit_h built from
segment-anything's modules with random weights: the cost of a network does not depend on its
weights; `tiny` is the tests' model), in a fresh subprocess: one image encoding (set_image, the
image resized to the model's 1024 px), the decoding of --prompts point prompts (multimask, as
pseudo_masks.method sam does), and the process's peak resident memory. The automatic
generator (proposals.method sam) costs one encoding plus the decoding of points_per_side^2
prompts (1024 at the default 32). Ends with one line
`sam_cost: <type>_encode_s=.. <type>_decode_ms_per_prompt=.. <type>_peak_mb=.. ...`.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model_type, prompts, side, threads):
    import numpy as np
    import torch
    from segment_anything import SamPredictor, sam_model_registry

    torch.set_num_threads(threads)
    if model_type == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from test_sam import TINY_SAM

        from tag2mask.sam.model import build_sam
        model = build_sam(TINY_SAM)
    else:
        model = sam_model_registry[model_type]()
    model.eval()
    predictor = SamPredictor(model)
    width, height = side
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    with torch.inference_mode():
        t = time.perf_counter()
        predictor.set_image(image)
        encode = time.perf_counter() - t
        points = torch.rand(prompts, 1, 2) * torch.tensor([width, height])
        coords = predictor.transform.apply_coords_torch(points, (height, width))
        labels = torch.ones(prompts, 1, dtype=torch.int64)
        t = time.perf_counter()
        predictor.predict_torch(coords, labels, multimask_output=True)
        decode = time.perf_counter() - t
    return {"encode_s": round(encode, 3), "decode_ms_per_prompt": round(1000 * decode / prompts, 2),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["tiny", "vit_b"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--side", default="1024x768", help="image WIDTHxHEIGHT")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one type in this process
    args = ap.parse_args()
    side = tuple(int(v) for v in args.side.split("x"))
    if args.one:
        print(json.dumps(measure(args.one, args.prompts, side, args.threads)))
        return
    figures = {}
    for model_type in args.types:
        out = subprocess.run([sys.executable, __file__, "--one", model_type, "--prompts",
                              str(args.prompts), "--side", args.side, "--threads",
                              str(args.threads)], capture_output=True, text=True, check=True)
        figures[model_type] = json.loads(out.stdout.strip().splitlines()[-1])
        print(model_type, figures[model_type], flush=True)
    print("sam_cost: " + " ".join(f"{t}_{k}={v}" for t, f in figures.items()
                                  for k, v in f.items()))


if __name__ == "__main__":
    main()
