"""Pseudo-mask method `sam` (config `pseudo_masks.method: sam`, options in the section `sam`):
each class peak is a point prompt for Segment Anything, as WeakSAM prompts SAM with peaks; per
peak SAM's best mask of its multimask output (by its predicted IoU), with

    confidence = sigmoid(peak value) x SAM's predicted IoU of that mask

then a greedy mask NMS (the more confident mask of a pair with IoU >= nms_iou is kept). Reads
the peaks store only (no proposals, never ground truth); writes the pseudo-mask store's six
arrays (docs/formats.md), `peak_index` the prompting peak."""

import logging
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from ..core import masks as mask_rle
from ..core.config import digest
from ..core.devices import resolve_device
from ..core.errors import InputError
from ..core.shards import shard_items
from ..core.store import StoreReader, StoreWriter
from ..dataset.images import load_rgb
from ..dataset.manifest import read_manifest
from .model import describe, load_sam

log = logging.getLogger(__name__)
KEY = "sam"


def prompt_masks(predictor, points_xy, batch):
    """(bool masks [P, H, W], predicted IoU [P]) for one point prompt each, on the image set
    in `predictor`: of SAM's multimask outputs, the one with the highest predicted IoU."""
    masks, ious = [], []
    size = predictor.original_size
    for start in range(0, len(points_xy), batch):
        pts = torch.as_tensor(points_xy[start:start + batch], dtype=torch.float32,
                              device=predictor.device)[:, None]
        coords = predictor.transform.apply_coords_torch(pts, size)
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=predictor.device)
        out, iou, _ = predictor.predict_torch(coords, labels, multimask_output=True)
        best = iou.argmax(1)
        pick = torch.arange(len(best), device=best.device)
        masks.append(out[pick, best].cpu().numpy())
        ious.append(iou[pick, best].float().cpu().numpy())
    return np.concatenate(masks), np.concatenate(ious)


def mask_nms(masks, confidence, labels, iou_threshold, class_agnostic):
    """Indices kept by a greedy mask NMS, most confident first."""
    order = np.argsort(-confidence, kind="stable")
    flat = masks[order].reshape(len(order), -1).astype(np.float32)
    inter = flat @ flat.T
    area = np.diag(inter)
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1e-9)
    if not class_agnostic:
        iou[labels[order][:, None] != labels[order][None]] = 0.0
    kept, suppressed = [], np.zeros(len(order), bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(order[i])
        suppressed |= iou[i] >= iou_threshold
    return np.asarray(kept, np.int64)


def image_instances(predictor, rgb, peaks, options):
    """The store arrays of one image from its peaks."""
    n = len(peaks["peak_class"])
    if n == 0:
        return _empty()
    yx = peaks["response_argmax_yx"] if options["point"] == "argmax" else peaks["peak_yx"]
    predictor.set_image(rgb)
    points_xy = np.ascontiguousarray(np.asarray(yx, np.float32)[:, ::-1])  # (row, col) -> (x, y)
    masks, iou = prompt_masks(predictor, points_xy, options["batch"])
    confidence = iou / (1.0 + np.exp(-peaks["peak_value"].astype(np.float64)))
    labels = np.asarray(peaks["peak_class"], np.int16)
    valid = masks.reshape(n, -1).any(1) & (confidence >= options["min_score"])
    keep = np.flatnonzero(valid)
    keep = keep[mask_nms(masks[keep], confidence[keep], labels[keep], options["nms_iou"],
                         options["nms_class_agnostic"])]
    counts = mask_rle.encode(masks[keep]) if len(keep) else []
    return {"masks": counts, "labels": labels[keep],
            "scores": confidence[keep].astype(np.float32),
            "boxes": mask_rle.boxes(counts, *rgb.shape[:2]),
            "peak_index": keep.astype(np.int32),
            "peak_yx": np.asarray(peaks["peak_yx"], np.float32).reshape(-1, 2)[keep]}


def _empty():
    return {"masks": [], "labels": np.zeros(0, np.int16), "scores": np.zeros(0, np.float32),
            "boxes": np.zeros((0, 4), np.float32), "peak_index": np.zeros(0, np.int32),
            "peak_yx": np.zeros((0, 2), np.float32)}


def make_shard(inputs, manifest_path, options, shard, num_shards, out_path, panels=None,
               progress=True):
    """One shard of the pseudo masks of the manifest's images in the peaks store."""
    from segment_anything import SamPredictor

    device = resolve_device(options["device"], f"{KEY}.device")
    model = load_sam(options, KEY, device)
    log.info("%s, on %s", describe(model), device)
    predictor = SamPredictor(model)
    manifest = read_manifest(manifest_path)
    status = Counter()
    with StoreReader(inputs["peaks"], "peaks") as peaks_store:
        if peaks_store.class_names != manifest.classes:
            raise InputError(peaks_store.path, f"class names {peaks_store.class_names} differ "
                                               f"from the manifest's {manifest.classes}")
        records = shard_items([r for r in manifest.images if r.id in peaks_store], num_shards,
                              shard)
        choice = {k: v for k, v in options.items() if k not in ("device", "batch")}
        config_digest = digest({"sam": choice, "peaks": peaks_store.attrs.get("config_digest")})
        with StoreWriter(out_path, "pseudo_masks", manifest.classes, config_digest,
                         attrs={"method": "sam", "shard": f"{shard}/{num_shards}"}) as out:
            for rec in tqdm(records, desc=f"SAM prompts shard {shard}", mininterval=10,
                            disable=not progress):
                peaks = peaks_store.read(rec.id, ["peak_class", "peak_yx", "peak_value",
                                                  "response_argmax_yx"])
                rgb = load_rgb(rec.path)
                if rgb.shape[:2] != (rec.height, rec.width):
                    raise InputError(rec.path, f"image is {rgb.shape[1]}x{rgb.shape[0]}, the "
                                               f"manifest says {rec.width}x{rec.height}")
                with torch.inference_mode():
                    arrays = image_instances(predictor, rgb, peaks, options)
                out.add(rec.id, rec.height, rec.width, arrays,
                        {"num_peaks": len(peaks["peak_class"])})
                status["images"] += 1
                status["peaks"] += len(peaks["peak_class"])
                status["instances"] += len(arrays["masks"])
            for key in ("images", "peaks", "instances"):
                out.file.attrs[f"count_{key}"] = int(status[key])
    log.info("shard %d/%d: %s", shard, num_shards, dict(status))
    return status
