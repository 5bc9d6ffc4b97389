"""Proposals method `sam` (config `proposals.method: sam`, options in `proposals.sam`): Segment
Anything's automatic mask generator on a regular point grid, its masks as proposals for any
retrieval rule, verification and the rest (tag2mask.proposals.make writes the store).
Objectness = SAM's predicted IoU x its stability score, best first."""

import logging

import numpy as np
import torch

from ..core import masks as mask_rle
from ..core.devices import resolve_device
from .model import describe, load_sam

log = logging.getLogger(__name__)
KEY = "proposals.sam"


def mask_generator(options):
    from segment_anything import SamAutomaticMaskGenerator

    device = resolve_device(options["device"], f"{KEY}.device")
    model = load_sam(options, KEY, device)
    log.info("%s, on %s", describe(model), device)
    return SamAutomaticMaskGenerator(
        model, points_per_side=options["points_per_side"],
        points_per_batch=options["points_per_batch"],
        pred_iou_thresh=options["pred_iou_thresh"],
        stability_score_thresh=options["stability_score_thresh"],
        box_nms_thresh=options["nms_iou"], output_mode="binary_mask")


def image_proposals(generator, rgb, options, max_proposals):
    """(RLE strings, objectness float32) of one image, best first, at most max_proposals;
    masks smaller than min_area of the image are dropped."""
    with torch.inference_mode():
        found = generator.generate(rgb)
    min_pixels = options["min_area"] * rgb.shape[0] * rgb.shape[1]
    found = [m for m in found if m["area"] >= max(min_pixels, 1)]
    scores = np.asarray([m["predicted_iou"] * m["stability_score"] for m in found], np.float32)
    order = np.argsort(-scores, kind="stable")[:max_proposals]
    if not len(order):
        return [], np.zeros(0, np.float32)
    masks = np.stack([found[i]["segmentation"] for i in order])
    return mask_rle.encode(masks), scores[order]

