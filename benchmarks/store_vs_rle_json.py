"""Pseudo-mask store (HDF5) vs a COCO RLE results JSON holding the same masks: file size, write
time, and the time to get one image's masks by id from a file on disk.

    .venv/bin/python benchmarks/store_vs_rle_json.py [--images 2000] [--masks 5] [--reads 30]

What each file holds, per instance:
- store (what `tag2mask.core.store` writes for kind "pseudo_masks"): `masks` (RLE counts strings),
  `labels` int16, `scores` float32, `boxes` float32 [4], `peak_index` int32, `peak_yx`
  float32 [2]; per image the attrs image_id, height, width.
- JSON ("json"): a pycocotools results list, written compactly (no spaces):
  {"image_id", "category_id", "segmentation": {"size", "counts"}, "score", "bbox"}, bbox as
  COCO [x, y, w, h] of the same boxes, numbers as the shortest text that gives back the same
  float32. The store holds more (peak_index, peak_yx): size_ratio is the goal's figure.
- JSON "same content": each record also has "peak_index" and "peak_yx", so it holds all the
  store holds.
- retrieval store: what `tag2mask pseudo_masks make --method retrieval` writes for the same
  masks: the store's arrays plus `proposal_index` int32 and `retrieval_score` float32, and 6
  more per-image attrs (num_peaks, retrieval_status, num_candidates, ...);
  retrieval_size_ratio compares it with "json".
Masks are random ellipses (VOC-like sizes) in 375x500 images. "Read one image" is measured
cold, as a stage or a viewer does it: open the file, find the image, get its RLE strings
(the JSON has to be parsed whole; the store reads one group). The store is also timed with
the file already open. Read timings are medians over --reads random images; the JSON read
time grows with the number of images, the store's does not (with 5 masks per image the
store is 10x faster from about 400 images on, 80-90x at 2000). Prints one JSON object; the goal
is size_ratio <= 1 and read_speedup >= 10.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
from tag2mask.core import masks as mask_rle  # noqa: E402
from tag2mask.core.store import StoreReader, StoreWriter  # noqa: E402

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


def make_images(n_images, n_masks, seed):
    """{image id: arrays of a pseudo-mask store entry}."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n_images):
        counts = mask_rle.encode(random_masks(rng, n_masks))
        images[f"2008_{i:06d}"] = {
            "masks": counts,
            "labels": rng.integers(0, len(CLASSES), n_masks).astype(np.int16),
            "scores": rng.uniform(0, 1, n_masks).astype(np.float32),
            "boxes": mask_rle.boxes(counts, H, W),
            "peak_index": np.arange(n_masks, dtype=np.int32),
            "peak_yx": rng.uniform(0, H, (n_masks, 2)).astype(np.float32)}
    return images


def coco_id(image_id):
    return int(image_id.split("_")[1]) + 1  # what a manifest's coco_image_id gives


def number(x):
    """A float32 as short JSON: an int if whole, else the shortest decimal of that float32."""
    x = np.float32(x)
    return int(x) if x == np.round(x) else float(str(x))  # numpy's str is the shortest


def coco_results(images, same_content):
    records = []
    for image_id, a in images.items():
        for j, counts in enumerate(a["masks"]):
            x0, y0, x1, y1 = a["boxes"][j]
            r = {"image_id": coco_id(image_id), "category_id": int(a["labels"][j]) + 1,
                 "segmentation": {"size": [H, W], "counts": counts},
                 "score": number(a["scores"][j]),
                 "bbox": [number(x0), number(y0), number(x1 - x0), number(y1 - y0)]}
            if same_content:
                r["peak_index"] = int(a["peak_index"][j])
                r["peak_yx"] = [number(v) for v in a["peak_yx"][j]]
            records.append(r)
    return records


def write_json(path, records):
    Path(path).write_text(json.dumps(records, separators=(",", ":")))


def write_store(path, images, as_retrieval=False):
    with StoreWriter(path, "pseudo_masks", CLASSES) as w:
        for image_id, arrays in images.items():
            attrs = None
            if as_retrieval:
                n = len(arrays["masks"])
                arrays = {**arrays, "proposal_index": np.arange(n, dtype=np.int32),
                          "retrieval_score": arrays["scores"] * np.float32(0.9)}
                attrs = {"num_peaks": n, "retrieval_status": "ok", "num_candidates": 3 * n,
                         "num_valid_candidates": 2 * n, "peaks_without_proposal": 0,
                         "peaks_merged": 0}
            w.add(image_id, H, W, arrays, attrs)


def read_store(path, image_id):
    with StoreReader(path, "pseudo_masks") as r:
        return r.read(image_id, ["masks"])["masks"]


def read_json(path, image_id):
    results = json.loads(Path(path).read_text())
    return [r["segmentation"]["counts"] for r in results if r["image_id"] == coco_id(image_id)]


def check_same_content(store_path, json_path, image_id):
    """The store entry and the JSON records of one image hold the same values."""
    with StoreReader(store_path, "pseudo_masks") as r:
        e = r.read(image_id)
    recs = [r for r in json.loads(Path(json_path).read_text())
            if r["image_id"] == coco_id(image_id)]
    assert e["masks"] == [r["segmentation"]["counts"] for r in recs]
    assert (e["labels"] + 1).tolist() == [r["category_id"] for r in recs]
    np.testing.assert_array_equal(e["scores"], np.array([r["score"] for r in recs], np.float32))
    xywh = np.array([r["bbox"] for r in recs], np.float32)
    np.testing.assert_array_equal(e["boxes"], np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]])


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
    images = make_images(args.images, args.masks, args.seed)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        store_path, json_path = Path(tmp) / "pseudo_masks.h5", Path(tmp) / "pseudo_masks.json"
        full_path = Path(tmp) / "pseudo_masks_same_content.json"
        t = time.perf_counter()
        write_store(store_path, images)
        store_write_s = time.perf_counter() - t
        t = time.perf_counter()
        write_json(json_path, coco_results(images, same_content=False))
        json_write_s = time.perf_counter() - t
        write_json(full_path, coco_results(images, same_content=True))
        retrieval_path = Path(tmp) / "retrieval.h5"
        write_store(retrieval_path, images, as_retrieval=True)
        rng = np.random.default_rng(args.seed + 1)
        ids = [f"2008_{i:06d}" for i in rng.integers(0, args.images, args.reads)]
        for image_id in ids[:3]:
            check_same_content(store_path, json_path, image_id)
        store_cold = timed(lambda i: read_store(store_path, i), ids)
        json_cold = timed(lambda i: read_json(json_path, i), ids)
        t = time.perf_counter()
        reader = StoreReader(store_path, "pseudo_masks")
        open_s = time.perf_counter() - t
        store_warm = timed(lambda i: reader.read(i, ["masks"]), ids)
        reader.close()
        store_bytes, json_bytes = store_path.stat().st_size, json_path.stat().st_size
        full_bytes = full_path.stat().st_size
        retrieval_bytes = retrieval_path.stat().st_size
    n = args.images
    print(json.dumps({
        "images": n, "masks_per_image": args.masks, "image_size": [H, W],
        "store_bytes": store_bytes, "json_bytes": json_bytes,
        "store_bytes_per_image": round(store_bytes / n),
        "json_bytes_per_image": round(json_bytes / n),
        "size_ratio": round(store_bytes / json_bytes, 3),
        "json_same_content_bytes": full_bytes,
        "size_ratio_same_content": round(store_bytes / full_bytes, 3),
        "retrieval_store_bytes_per_image": round(retrieval_bytes / n),
        "retrieval_size_ratio": round(retrieval_bytes / json_bytes, 3),
        "store_read_one_image_s": round(store_cold, 6),
        "json_read_one_image_s": round(json_cold, 6),
        "read_speedup": round(json_cold / store_cold, 1),
        "store_open_s": round(open_s, 6),
        "store_read_one_image_open_file_s": round(store_warm, 6),
        "store_write_s": round(store_write_s, 3),
        "json_write_s": round(json_write_s, 3),
        "goal_met": store_bytes <= json_bytes and json_cold / store_cold >= 10,
    }, indent=1))


if __name__ == "__main__":
    main()
