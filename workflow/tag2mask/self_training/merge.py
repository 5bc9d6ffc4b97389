"""Self-training: Mask R-CNN's predictions on the training images become the next round's
pseudo masks, checked against the weak evidence (image tags and class peaks).

Round r (r >= 1) starts from the model of round r-1 (round 0 is the Mask R-CNN trained on the
retrieval pseudo masks) and its predictions on the *training* images (`tag2mask maskrcnn predict
--split train`; no ground truth anywhere). `merge_image` builds the new pseudo masks of one
image from those predictions, the image's peaks (peaks store) and round r-1's pseudo masks:

1. Candidates are the predictions with score >= `score_threshold` whose class is one of the
   image's tags (a class the image is not tagged with cannot be in it), best score first.
2. A candidate *claims* the peaks of its class that lie inside its mask and that no better
   candidate has claimed. With `require_peak` a candidate that claims no peak is rejected;
   the kept mask's `peak_index` is its claimed peak with the highest class-map value (-1 when
   it claims none and `require_peak` is off). A candidate whose mask overlaps an already kept
   mask of the same class at IoU >= `duplicate_iou` is rejected as a duplicate.
3. Fallback: each pseudo mask of round r-1 whose peak was claimed by no kept prediction, and
   that overlaps no kept prediction of its class at IoU >= `duplicate_iou`, is carried over
   unchanged, so an object the model missed keeps its previous mask.
The store has the pseudo-mask layout (docs/formats.md) plus `origin` (int8 [N]: 1 = kept
prediction, 0 = carried over from round r-1); the merge counts are the root attr `merge_stats`.
The next model is trained from scratch on the new store, with the same schedule as round 0
(the `maskrcnn train` command unchanged), so rounds differ only in their training targets.
"""

import json
import logging
from collections import Counter, defaultdict

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..core import masks as rle
from ..core.config import digest
from ..core.errors import InputError
from ..core.store import StoreReader, StoreWriter
from ..dataset.manifest import read_manifest
from ..evaluation.metrics import read_predictions

log = logging.getLogger(__name__)

ORIGIN_PREDICTION, ORIGIN_PREVIOUS = 1, 0


def _point_inside(masks, yx):
    """bool [N, P]: is peak p (row, col, image pixels) inside mask n [N, H, W]?"""
    n, h, w = masks.shape
    if n == 0 or len(yx) == 0:
        return np.zeros((n, len(yx)), bool)
    ys = np.clip(np.floor(yx[:, 0]).astype(int), 0, h - 1)
    xs = np.clip(np.floor(yx[:, 1]).astype(int), 0, w - 1)
    return masks[:, ys, xs]


def _iou(a_counts, b_counts, h, w):
    """IoU matrix [len(a), len(b)] of RLE counts strings."""
    if not a_counts or not b_counts:
        return np.zeros((len(a_counts), len(b_counts)))
    def to_rles(counts):
        return [{"size": [h, w], "counts": c.encode("ascii") if isinstance(c, str) else c}
                for c in counts]
    iou = mask_utils.iou(to_rles(a_counts), to_rles(b_counts), [0] * len(b_counts))
    return np.asarray(iou, dtype=float).reshape(len(a_counts), len(b_counts))


def merge_image(predictions, peaks, previous, tags, height, width, options):
    """One image's next-round pseudo masks.

    predictions: list of COCO results of this image (category_id = class + 1, RLE segmentation)
    peaks:       dict with peak_class [P], peak_yx [P, 2], peak_value [P]
    previous:    dict of the previous store's arrays (masks, labels, scores, peak_index, peak_yx)
    tags:        set of class indices the image is tagged with
    Returns (store arrays dict, Counter of what happened)."""
    h, w = int(height), int(width)
    counts = Counter()
    thr, need_peak, dup_iou = (options["score_threshold"], options["require_peak"],
                               options["duplicate_iou"])
    cands = []
    for p in predictions:
        label = int(p["category_id"]) - 1
        if float(p["score"]) < thr:
            counts["below_threshold"] += 1
        elif label not in tags:
            counts["untagged_class"] += 1
        else:
            cands.append(p)
    cands.sort(key=lambda p: -float(p["score"]))

    peak_class = np.asarray(peaks["peak_class"], np.int64).reshape(-1)
    peak_yx = np.asarray(peaks["peak_yx"], np.float32).reshape(-1, 2)
    peak_value = np.asarray(peaks.get("peak_value", np.zeros(len(peak_class))),
                            np.float32).reshape(-1)
    cand_counts = [p["segmentation"]["counts"] for p in cands]
    for p in cands:
        if list(p["segmentation"]["size"]) != [h, w]:
            raise InputError("predictions", f"image id {p['image_id']}: mask size "
                                            f"{p['segmentation']['size']} is not {[h, w]}")
    inside = _point_inside(rle.decode(cand_counts, h, w), peak_yx)  # [C, P]
    cand_iou = _iou(cand_counts, cand_counts, h, w)

    claimed = np.full(len(peak_class), -1)
    kept, kept_peak = [], []
    for k, p in enumerate(cands):
        label = int(p["category_id"]) - 1
        if any(int(cands[j]["category_id"]) - 1 == label and cand_iou[k, j] >= dup_iou
               for j in kept):
            counts["duplicate"] += 1
            continue
        mine = np.flatnonzero(inside[k] & (peak_class == label) & (claimed < 0))
        if need_peak and len(mine) == 0:
            counts["no_peak"] += 1
            continue
        claimed[mine] = k
        kept.append(k)
        kept_peak.append(int(mine[np.argmax(peak_value[mine])]) if len(mine) else -1)
    counts["kept_predictions"] += len(kept)

    # fallback: previous pseudo masks whose object no kept prediction took over
    prev_counts = list(previous["masks"])
    prev_labels = np.asarray(previous["labels"], np.int64).reshape(-1)
    prev_peak = np.asarray(previous["peak_index"], np.int64).reshape(-1)
    kept_counts = [cand_counts[k] for k in kept]
    kept_labels = np.array([int(cands[k]["category_id"]) - 1 for k in kept], np.int64)
    prev_iou = _iou(prev_counts, kept_counts, h, w)
    carried = []
    for j in range(len(prev_counts)):
        if 0 <= prev_peak[j] < len(claimed) and claimed[prev_peak[j]] >= 0:
            counts["replaced"] += 1
        elif np.any((kept_labels == prev_labels[j]) & (prev_iou[j] >= dup_iou)):
            counts["replaced"] += 1
        else:
            carried.append(j)
    counts["carried_over"] += len(carried)

    masks_out = kept_counts + [prev_counts[j] for j in carried]
    n = len(masks_out)
    prev_yx = np.asarray(previous["peak_yx"], np.float32).reshape(-1, 2)
    peak_index = np.array(kept_peak + [int(prev_peak[j]) for j in carried], np.int32)
    yx = np.full((n, 2), np.nan, np.float32)
    for i, pi in enumerate(kept_peak):
        if pi >= 0:
            yx[i] = peak_yx[pi]
    yx[len(kept):] = prev_yx[carried]
    arrays = {
        "masks": masks_out,
        "labels": np.concatenate([kept_labels, prev_labels[carried]]).astype(np.int16),
        "scores": np.concatenate([[float(cands[k]["score"]) for k in kept],
                                  np.asarray(previous["scores"], np.float32).reshape(-1)[carried]]
                                 ).astype(np.float32),
        "boxes": rle.boxes(masks_out, h, w).reshape(n, 4),
        "peak_index": peak_index,
        "peak_yx": yx,
        "origin": np.array([ORIGIN_PREDICTION] * len(kept) + [ORIGIN_PREVIOUS] * len(carried),
                           np.int8),
    }
    return arrays, counts


def merge_round(predictions_path, peaks_path, previous_path, manifest_path, options, out_path):
    """Write the next round's pseudo-mask store; returns the merge counts (dict)."""
    manifest = read_manifest(manifest_path)
    results = read_predictions(predictions_path)
    by_coco = {manifest.coco_image_id(r.id): r for r in manifest.images}
    preds = defaultdict(list)
    for p in results:
        rec = by_coco.get(int(p["image_id"]))
        if rec is None:
            raise InputError(predictions_path, f"image id {p['image_id']} is not in the manifest")
        preds[rec.id].append(p)

    totals = Counter()
    with StoreReader(previous_path, "pseudo_masks") as prev, \
            StoreReader(peaks_path, "peaks") as peaks:
        for r in (prev, peaks):
            if list(r.class_names) != list(manifest.classes):
                raise InputError(r.path, f"class names {r.class_names} differ from the "
                                         f"manifest's {manifest.classes}")
        image_ids = prev.image_ids
        stray = set(preds) - set(image_ids)
        if stray:
            log.warning("%d predicted image(s) are not in the previous pseudo-mask store and "
                        "are ignored (e.g. %s)", len(stray), sorted(stray)[0])
        records = {r.id: r for r in manifest.images}
        with StoreWriter(out_path, "pseudo_masks", manifest.classes,
                         config_digest=digest(options)) as writer:
            for image_id in tqdm(image_ids, desc="self-training merge", mininterval=2.0):
                rec = records.get(image_id)
                if rec is None:
                    raise InputError(previous_path, f"image {image_id!r} is not in the manifest")
                if image_id not in peaks:
                    raise InputError(peaks_path, f"image {image_id!r} has no peaks entry")
                pk = peaks.read(image_id, ["peak_class", "peak_yx", "peak_value"])
                pv = prev.read(image_id, ["masks", "labels", "scores", "peak_index", "peak_yx"])
                tags = set(manifest.label_indices(rec))
                arrays, c = merge_image(preds.get(image_id, []), pk, pv, tags, rec.height,
                                        rec.width, options)
                totals.update(c)
                totals["images"] += 1
                totals["images_with_masks"] += int(len(arrays["masks"]) > 0)
                writer.add(image_id, rec.height, rec.width, arrays)
            writer.file.attrs["merge_stats"] = json.dumps(dict(totals), sort_keys=True)
    log.info("self-training merge: %s", dict(totals))
    return dict(totals)
