"""Pseudo-mask store (HDF5) vs a COCO RLE results JSON holding the same masks: file size and
the time to get one image's masks by id from a file on disk.

    .venv/bin/python benchmarks/store_vs_rle_json.py [--images 2000] [--masks 5] [--reads 30]

The RLE JSON is a COCO results list (image_id, category_id, segmentation, score);
"same content" adds the store's other arrays (bbox, peak_index, peak_yx) to each record.
Masks are random ellipses (VOC-like sizes) in 375x500 images. "Read one image" is measured
cold, as a stage or a viewer does it: open the file, find the image, get its RLE strings
(the JSON has to be parsed whole; the store reads one group). The store is also timed with
the file already open. Prints one JSON object; the goal is size_ratio <= 1 and
read_speedup >= 10.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
from tag2mask import masks as mask_rle  # noqa: E402
from tag2mask.store import StoreReader, StoreWriter  # noqa: E402

H, W = 375, 500
CLASSES = [f"class{i}" for i in range(20)]


def random_masks(rng, n):
    """n filled ellipses of random centre, radii and orientation."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.zeros((n, H, W), bool)
    for i in range(n):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(15, 150), rng.uniform(15, 200)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / rx
        v = (-dx * np.sin(t) + dy * np.cos(t)) / ry
        out[i] = u * u + v * v <= 1
    return out


def build(folder, n_images, n_masks, seed):
    rng = np.random.default_rng(seed)
    store_path, json_path = folder / "pseudo_masks.h5", folder / "pseudo_masks.json"
    results, full = [], []
    with StoreWriter(store_path, "pseudo_masks", CLASSES) as w:
        for i in range(n_images):
            image_id = f"2008_{i:06d}"
            counts = mask_rle.encode(random_masks(rng, n_masks))
            labels = rng.integers(0, len(CLASSES), n_masks).astype(np.int16)
            scores = rng.uniform(0, 1, n_masks).astype(np.float32)
            arrays = {"masks": counts, "labels": labels, "scores": scores,
                      "boxes": mask_rle.boxes(counts, H, W),
                      "peak_index": np.arange(n_masks, dtype=np.int32),
                      "peak_yx": rng.uniform(0, H, (n_masks, 2)).astype(np.float32)}
            w.add(image_id, H, W, arrays)
            for j, (c, label, score) in enumerate(zip(counts, labels, scores)):
                # the store's other arrays too, for a same-content comparison
                full.append({"image_id": i + 1, "category_id": int(label) + 1,
                             "segmentation": {"size": [H, W], "counts": c},
                             "score": round(float(score), 4),
                             "bbox": arrays["boxes"][j].tolist(), "peak_index": j,
                             "peak_yx": np.round(arrays["peak_yx"][j], 2).tolist()})
                results.append({"image_id": i + 1, "category_id": int(label) + 1,
                                "segmentation": {"size": [H, W], "counts": c},
                                "score": round(float(score), 4)})
    json_path.write_text(json.dumps(results))
    return store_path, json_path, len(json.dumps(full))


def read_store(path, image_id):
    with StoreReader(path, "pseudo_masks") as r:
        return r.read(image_id, ["masks"])["masks"]


def read_json(path, image_id):
    coco_id = int(image_id.split("_")[1]) + 1  # what a manifest's coco_image_id gives
    results = json.loads(Path(path).read_text())
    return [r["segmentation"]["counts"] for r in results if r["image_id"] == coco_id]


def timed(fn, ids):
    times = []
    for image_id in ids:
        t = time.perf_counter()
        fn(image_id)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--masks", type=int, default=5, help="masks per image")
    ap.add_argument("--reads", type=int, default=30, help="random images read (median time)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        t0 = time.perf_counter()
        store_path, json_path, full_json_bytes = build(Path(tmp), args.images, args.masks, args.seed)
        build_s = time.perf_counter() - t0
        rng = np.random.default_rng(args.seed + 1)
        ids = [f"2008_{i:06d}" for i in rng.integers(0, args.images, args.reads)]
        for image_id in ids[:3]:  # same masks from both files
            assert read_store(store_path, image_id) == read_json(json_path, image_id)
        store_cold = timed(lambda i: read_store(store_path, i), ids)
        json_cold = timed(lambda i: read_json(json_path, i), ids)
        t = time.perf_counter()
        reader = StoreReader(store_path, "pseudo_masks")
        open_s = time.perf_counter() - t
        store_warm = timed(lambda i: reader.read(i, ["masks"]), ids)
        reader.close()
        store_bytes, json_bytes = store_path.stat().st_size, json_path.stat().st_size
    print(json.dumps({
        "images": args.images, "masks_per_image": args.masks, "image_size": [H, W],
        "store_bytes": store_bytes, "json_bytes": json_bytes,
        "size_ratio": round(store_bytes / json_bytes, 3),
        "json_same_content_bytes": full_json_bytes,
        "size_ratio_same_content": round(store_bytes / full_json_bytes, 3),
        "store_read_one_image_s": round(store_cold, 6),
        "json_read_one_image_s": round(json_cold, 6),
        "read_speedup": round(json_cold / store_cold, 1),
        "store_open_s": round(open_s, 6),
        "store_read_one_image_open_file_s": round(store_warm, 6),
        "build_s": round(build_s, 1),
        "goal_met": store_bytes <= json_bytes and json_cold / store_cold >= 10,
    }, indent=1))


if __name__ == "__main__":
    main()
