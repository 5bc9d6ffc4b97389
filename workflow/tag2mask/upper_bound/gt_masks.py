"""The upper bound: ground-truth masks of the training images as a "pseudo_masks" store.

EVALUATION SIDE ONLY. This is the one place where training data comes from ground truth: the
upper-bound run (`{RUN}/upper_bound/`) trains the same Mask R-CNN, with the same schedule, on
the GT masks of the same training images, to show how far the weakly supervised pipeline is
from full supervision on this dataset. No weakly supervised stage reads its output.

`tag2mask upper_bound gt-masks --gt G --manifest M --out S` writes a store with the pseudo-mask
layout (docs/formats.md): masks = the GT instance RLEs (crowd regions left out), labels =
category_id - 1, scores 1.0, boxes = tight boxes, peak_index -1 and peak_yx NaN (no peak).
Every manifest image of the split is present, also those without a GT instance (N = 0).
"""

import logging
from collections import defaultdict

import numpy as np

from ..core import masks as rle
from ..core.config import digest
from ..core.errors import InputError
from ..core.store import StoreWriter
from ..dataset.manifest import read_manifest
from ..evaluation.metrics import read_ground_truth

log = logging.getLogger(__name__)


def gt_to_pseudo_mask_store(gt_path, manifest_path, out_path, split="train"):
    """Write the GT instances of `split` as a "pseudo_masks" store; returns (images, instances)."""
    gt = read_ground_truth(gt_path)
    manifest = read_manifest(manifest_path)
    records = manifest.split(split)
    if not records:
        raise InputError(manifest_path, f"no images in split {split!r}")
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    if names != list(manifest.classes) or [c["id"] for c in categories] != list(
            range(1, len(names) + 1)):
        raise InputError(gt_path, f"categories {names} are not the manifest's classes "
                                  f"{manifest.classes} with ids 1..C")
    gt_images = {int(im["id"]): im for im in gt["images"]}
    anns = defaultdict(list)
    for a in gt["annotations"]:
        if int(a.get("iscrowd", 0)):
            continue  # crowd regions are not instances (and COCOeval ignores them as GT)
        anns[int(a["image_id"])].append(a)

    n_instances = 0
    with StoreWriter(out_path, "pseudo_masks", manifest.classes,
                     config_digest=digest({"source": "ground_truth", "split": split}),
                     attrs={"source": "ground_truth"}) as writer:
        for rec in records:
            coco_id = manifest.coco_image_id(rec.id)
            im = gt_images.get(coco_id)
            if im is None:
                raise InputError(gt_path, f"image {rec.id!r} (id {coco_id}) of split {split!r} "
                                          f"is not in the ground truth")
            if im.get("name", rec.id) != rec.id:
                raise InputError(gt_path, f"image id {coco_id} is {im.get('name')!r} in the "
                                          f"ground truth but {rec.id!r} in the manifest")
            h, w = rec.height, rec.width
            counts, labels = [], []
            for a in anns.get(coco_id, []):
                r = rle.segmentation_to_rle(a["segmentation"], im, gt_path)
                c = r["counts"]
                counts.append(c.decode("ascii") if isinstance(c, bytes) else c)
                labels.append(int(a["category_id"]) - 1)
            n = len(counts)
            n_instances += n
            writer.add(rec.id, h, w, {
                "masks": counts,
                "labels": np.asarray(labels, np.int16),
                "scores": np.ones(n, np.float32),
                "boxes": rle.boxes(counts, h, w).reshape(n, 4),
                "peak_index": np.full(n, -1, np.int32),
                "peak_yx": np.full((n, 2), np.nan, np.float32),
            })
    log.info("upper bound: %d GT instances of %d %s images -> %s", n_instances, len(records),
             split, out_path)
    return len(records), n_instances
