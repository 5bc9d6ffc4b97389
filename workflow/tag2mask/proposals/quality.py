"""Proposal quality against ground truth (an evaluation stage: reads GT, feeds no training).

    tag2mask evaluate-proposals --proposals P.h5 --gt train=gt/train.json --out quality.json

Figures, over the non-crowd GT instances of one split:
- ABO (average best overlap): mean over GT instances of the best IoU with any proposal;
  abo_top100: the same over the first 100 proposals only (retrieval's default candidates).
- recall@0.5 / recall@0.7: share of GT instances whose best IoU reaches 0.5 / 0.7.
- point_retrieval_miou: for each GT instance, take one interior point (the maximum of its
  distance transform, a stand-in for a well-placed peak) and the highest-scoring proposal
  that covers it (WISE's rule: the highest objectness); mean IoU of that proposal. It
  measures whether the objectness score is useful, not just whether a good mask exists.
- proposals per image, generation seconds (wall clock) and CPU seconds per image (from the
  store's per-image attrs; wall clock depends on how busy the machine was).

Void pixels (VOC's 255, the image entry's `void` RLE) are removed from proposals before the
IoU, as the VOC protocol does for predictions; GT masks contain no void pixels.
"""

import json
import logging
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from ..core.errors import InputError
from ..core.masks import safe_area
from ..core.store import StoreReader

log = logging.getLogger(__name__)
THRESHOLDS = (0.5, 0.7)
TOP = 100  # retrieval's default candidates: the first 100 proposals of an image
_DECODE_CHUNK = 256


def _rles(counts, height, width):
    return [{"size": [int(height), int(width)],
             "counts": c.encode("ascii") if isinstance(c, str) else c} for c in counts]


def best_overlaps(proposals, gt, height, width, void=None):
    """IoU matrix [P, G] between proposal and GT RLEs (counts strings or RLE dicts), with
    `void` (an RLE dict or None) removed from the proposals."""
    p = proposals if proposals and isinstance(proposals[0], dict) else _rles(proposals, height,
                                                                            width)
    g = gt if gt and isinstance(gt[0], dict) else _rles(gt, height, width)
    if not p or not g:
        return np.zeros((len(p), len(g)))
    area_p = safe_area(p).astype(np.float64)
    area_g = safe_area(g).astype(np.float64)
    # iscrowd=1 gives |P n G| / |P|: the intersection without a union
    inter = np.asarray(mask_utils.iou(p, g, [1] * len(g))) * area_p[:, None]
    if void is not None:
        in_void = np.asarray(mask_utils.iou(p, [void], [1]))[:, 0] * area_p
        area_p = area_p - in_void
    union = area_p[:, None] + area_g[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def interior_points(gt_rles):
    """One interior point (row, col) per GT mask: the maximum of its distance transform."""
    masks = mask_utils.decode(gt_rles)
    points = []
    for i in range(masks.shape[2]):
        d = ndimage.distance_transform_edt(np.pad(masks[:, :, i], 1))[1:-1, 1:-1]
        points.append(np.unravel_index(int(np.argmax(d)), d.shape))
    return np.array(points, np.int64).reshape(-1, 2)


def best_covering(proposal_rles, points, scores):
    """Index of the highest-scoring proposal covering each point (the earlier one on ties),
    -1 if none covers it."""
    scores = np.asarray(scores, np.float64)
    out = np.full(len(points), -1, np.int64)
    best = np.full(len(points), -np.inf)
    for start in range(0, len(proposal_rles), _DECODE_CHUNK):
        chunk = mask_utils.decode(proposal_rles[start:start + _DECODE_CHUNK])  # [H, W, n]
        hits = chunk[points[:, 0], points[:, 1], :].astype(bool)  # [points, n]
        value = np.where(hits, scores[start:start + hits.shape[1]][None, :], -np.inf)
        arg = np.argmax(value, 1)
        top = value[np.arange(len(points)), arg]
        better = top > best
        out[better] = start + arg[better]
        best[better] = top[better]
    return out


def image_figures(proposal_counts, gt_rles, height, width, void=None, scores=None):
    """Per GT instance of one image (arrays of length G): best IoU with any proposal, IoU of
    the highest-scoring proposal covering its interior point (WISE's rule; `scores` None: the
    best-ranked one), best IoU among the first TOP proposals."""
    if not gt_rles:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    p = _rles(proposal_counts, height, width)
    iou = best_overlaps(p, gt_rles, height, width, void)
    if len(p) == 0:
        return (np.zeros(len(gt_rles)),) * 3
    best = iou.max(0)
    if scores is None:
        scores = -np.arange(len(p), dtype=np.float64)
    idx = best_covering(p, interior_points(gt_rles), scores)
    retrieved = np.where(idx >= 0, iou[np.maximum(idx, 0), np.arange(len(gt_rles))], 0.0)
    return best, retrieved, iou[:TOP].max(0)


def summarise(best, retrieved, n_props, seconds, best_top=()):
    best = np.asarray(best, np.float64)
    out = {
        "gt_instances": int(len(best)),
        "abo": float(best.mean()) if len(best) else None,
        f"abo_top{TOP}": float(np.mean(best_top)) if len(best_top) else None,
        **{f"recall@{t}": (float((best >= t).mean()) if len(best) else None) for t in THRESHOLDS},
        "point_retrieval_miou": float(np.mean(retrieved)) if len(retrieved) else None,
        "images": int(len(n_props)),
        "proposals_per_image": float(np.mean(n_props)) if len(n_props) else None,
        "seconds_per_image": float(np.mean(seconds)) if len(seconds) else None,
    }
    return out


def load_gt(gt_path):
    """GT instances per image name: {name: (height, width, [RLE dict], void RLE or None)}."""
    try:
        coco = json.loads(Path(gt_path).read_text())
    except FileNotFoundError:
        raise InputError(gt_path, "ground-truth file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(gt_path, f"not valid JSON ({e})") from None
    by_id = {}
    for im in coco.get("images", []):
        void = im.get("void")
        if void is not None:
            void = {"size": void["size"], "counts": void["counts"].encode("ascii")
                    if isinstance(void["counts"], str) else void["counts"]}
        by_id[im["id"]] = (im.get("name", str(im["id"])), im["height"], im["width"], [], void)
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0):
            continue
        name, h, w, rles, _ = by_id[a["image_id"]]
        seg = a["segmentation"]
        if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            seg = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(seg, dict):
            seg = {"size": seg["size"], "counts": seg["counts"].encode("ascii")
                   if isinstance(seg["counts"], str) else seg["counts"]}
        else:  # polygons
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        rles.append(seg)
    return {name: (h, w, rles, void) for name, h, w, rles, void in by_id.values()}


def evaluate_store(proposals_path, gt_path):
    """Quality figures of a proposals store against a COCO GT file (images in both)."""
    gt = load_gt(gt_path)
    best, retrieved, best_top, n_props, seconds, cpu = [], [], [], [], [], []
    with StoreReader(proposals_path, "proposals") as r:
        missing = [name for name in gt if name not in r]
        for name in gt:
            if name not in r:
                continue
            h, w, rles, void = gt[name]
            entry = r.read(name)
            if (entry["height"], entry["width"]) != (h, w):
                raise InputError(proposals_path, f"image {name!r} is {entry['height']}x"
                                 f"{entry['width']} in the store but {h}x{w} in {gt_path}")
            b, ret, top = image_figures(entry["masks"], rles, h, w, void, entry["scores"])
            best.extend(b.tolist())
            retrieved.extend(ret.tolist())
            best_top.extend(top.tolist())
            n_props.append(len(entry["masks"]))
            if "seconds" in entry:
                seconds.append(float(entry["seconds"]))
            if "cpu_seconds" in entry:
                cpu.append(float(entry["cpu_seconds"]))
    if missing:
        log.warning("%d GT images have no proposals in %s (left out)", len(missing),
                    proposals_path)
    out = summarise(best, retrieved, n_props, seconds, best_top)
    out["cpu_seconds_per_image"] = float(np.mean(cpu)) if cpu else None
    out["gt_images_without_proposals"] = len(missing)
    return out
