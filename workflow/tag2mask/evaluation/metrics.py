"""Instance-mask evaluation: mask mAP at chosen IoU thresholds, COCO AP and ABO.

One evaluator for every evaluation rule (pseudo masks, Mask R-CNN predictions). Inputs:
ground truth as a COCO instances JSON (tag2mask gt format, docs/formats.md) and predictions as
a COCO results list ({image_id, category_id, segmentation (RLE), score}), which is also what a
pseudo-mask store exports to (`pseudo_masks_to_results`).

Protocol (recorded in the output's "protocol" entry):
- AP: pycocotools COCOeval, iouType "segm", one area range (all), maxDets per image and class,
  COCO 101-point interpolated precision. A detection matches at threshold t when IoU >= t.
  mAP@t is the mean AP over the classes that have at least one (non-crowd) GT instance in the
  evaluated images; classes without GT are excluded (COCOeval marks them -1). "AP" is the
  COCO mean over IoU 0.50:0.05:0.95. Crowd GT regions are ignored as COCOeval does.
- VOC options (as WISE evaluates VOC): `void_removal` removes the image's void pixels (GT
  `void` RLE) from GT and predicted masks before any IoU; `score_cutoff` drops predictions
  with score < cutoff (WISE uses 0.5; 0 keeps all).
- ABO (average best overlap): for every non-crowd GT instance, the best IoU with any prediction
  of the same image, whatever its class (class-agnostic, as WISE computes it), over all
  predictions left after the score cut-off (no maxDets limit); averaged over GT instances.
All figures are fractions in [0, 1]; a figure that cannot be defined (no GT instance at all)
is null.
"""

import contextlib
import io
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..core.atomic import read_json
from ..core.errors import InputError
from ..core.masks import segmentation_to_rle
from ..core.store import StoreReader

log = logging.getLogger(__name__)

COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
DEFAULT_IOU_THRESHOLDS = (0.25, 0.5, 0.75)


# ---------------------------------------------------------------------------------------------
# reading inputs

def read_ground_truth(path):
    """A COCO instances dict (images, annotations, categories), checked for the keys we use."""
    gt = read_json(path, "ground truth")
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations",
                                                              "categories")):
        raise InputError(path, "not a COCO instances JSON (needs images, annotations, "
                               "categories)")
    return gt


def read_predictions(path, manifest=None):
    """Predictions as a COCO results list, from a results JSON or a pseudo-mask store (.h5)."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        if manifest is None:
            raise InputError(path, "a pseudo-mask store needs --manifest (for the COCO image ids)")
        return pseudo_masks_to_results(path, manifest)
    results = read_json(path, "predictions")
    if not isinstance(results, list):
        raise InputError(path, "predictions must be a COCO results list (a JSON array)")
    return results


def check_manifest_matches(gt, manifest, gt_path):
    """The GT's integer image ids must be the manifest's COCO ids of the same images."""
    for im in gt["images"]:
        name = im.get("name")
        if name is None:
            continue
        try:
            coco_id = manifest.coco_image_id(name)
        except KeyError:
            raise InputError(gt_path, f"image {name!r} is not in the manifest "
                                      f"{manifest.source}") from None
        if coco_id != im["id"]:
            raise InputError(gt_path, f"image {name!r} has id {im['id']} but the manifest "
                                      f"{manifest.source} gives it id {coco_id}")


def pseudo_masks_to_results(store_path, manifest, min_score=None):
    """COCO result dicts of every instance in a "pseudo_masks" store (with `min_score`, of
    those whose confidence reaches it).

    image_id = manifest.coco_image_id(store image id); category_id = label + 1 (categories
    are 1..C in manifest class order); segmentation = the stored compressed RLE.
    """
    results = []
    with StoreReader(store_path, "pseudo_masks") as store:
        if list(store.class_names) != list(manifest.classes):
            raise InputError(store_path, f"class names {store.class_names} differ from the "
                                         f"manifest's {manifest.classes}")
        known = {r.id for r in manifest.images}
        for image_id in store.image_ids:
            if image_id not in known:
                raise InputError(store_path, f"image {image_id!r} is not in the manifest")
            entry = store.read(image_id, ["masks", "labels", "scores"])
            coco_id = manifest.coco_image_id(image_id)
            h, w = int(entry["height"]), int(entry["width"])
            for counts, label, score in zip(entry["masks"], entry["labels"], entry["scores"]):
                if min_score is not None and score < min_score:
                    continue
                results.append({
                    "image_id": coco_id,
                    "category_id": int(label) + 1,
                    "segmentation": {"size": [h, w], "counts": counts},
                    "score": float(score),
                })
    return results


def results_to_instances(results, manifest, image_ids=None):
    """A COCO instances dict (images + categories + annotations) holding `results` as
    annotations (with their scores), loadable by pycocotools COCO() as ground truth.

    image_ids: the manifest image ids to list as images (default: those with a result)."""
    by_coco_id = {manifest.coco_image_id(r.id): r for r in manifest.images}
    wanted = ({manifest.coco_image_id(i) for i in image_ids} if image_ids is not None
              else {r["image_id"] for r in results})
    images = [{"id": cid, "name": rec.id, "file_name": rec.path, "width": rec.width,
               "height": rec.height} for cid, rec in sorted(by_coco_id.items()) if cid in wanted]
    annotations = []
    for i, r in enumerate(results):
        rle = segmentation_to_rle(r["segmentation"])
        x, y, bw, bh = mask_utils.toBbox(rle).tolist()
        annotations.append({"id": i + 1, "image_id": r["image_id"],
                            "category_id": r["category_id"], "segmentation": r["segmentation"],
                            "area": int(mask_utils.area(rle)), "bbox": [x, y, bw, bh],
                            "iscrowd": 0, "score": r["score"]})
    return {"info": {"description": "tag2mask pseudo masks"}, "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(manifest.classes)]}


# ---------------------------------------------------------------------------------------------
# evaluation

def evaluate(gt, predictions, iou_thresholds=DEFAULT_IOU_THRESHOLDS, max_dets=100,
             void_removal=True, score_cutoff=0.0, where="predictions"):
    """Evaluate COCO results `predictions` against the COCO instances dict `gt`.

    Returns the report dict described in the module docstring (protocol, mAP@t per threshold,
    AP, ABO, per_class, counts). `where` names the predictions in error messages.
    """
    iou_thresholds = sorted({round(float(t), 4) for t in iou_thresholds})
    images = {int(im["id"]): im for im in gt["images"]}
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    cat_ids = [int(c["id"]) for c in categories]

    # void pixels per image, as the RLE of the pixels to keep (only with the VOC protocol)
    keep = {}
    if void_removal:
        for im in images.values():
            if im.get("void"):
                void = mask_utils.decode(segmentation_to_rle(im["void"], im))
                keep[im["id"]] = mask_utils.encode(np.asfortranarray(1 - void))

    gt_anns = []
    dropped_empty = 0
    for a in gt["annotations"]:
        im = images.get(int(a["image_id"]))
        if im is None:
            raise InputError("ground truth", f"annotation {a.get('id')} refers to unknown "
                                             f"image {a['image_id']}")
        rle = _remove_void(segmentation_to_rle(a["segmentation"], im), keep.get(im["id"]))
        area = int(mask_utils.area(rle))
        if area == 0:  # an instance made only of void pixels cannot be found by anyone
            dropped_empty += 1
            continue
        gt_anns.append({"id": len(gt_anns) + 1, "image_id": im["id"],
                        "category_id": int(a["category_id"]), "segmentation": rle,
                        "area": area, "iscrowd": int(a.get("iscrowd", 0)),
                        "bbox": mask_utils.toBbox(rle).tolist()})
    if dropped_empty:
        log.warning("%d GT instance(s) lie entirely in void pixels and are left out",
                    dropped_empty)

    dt_anns, below_cutoff = [], 0
    for p in predictions:
        image_id, category_id = _check_prediction(p, images, cat_ids, where)
        score = float(p["score"])
        if score < score_cutoff:
            below_cutoff += 1
            continue
        im = images[image_id]
        rle = _remove_void(segmentation_to_rle(p["segmentation"], im, where), keep.get(image_id))
        dt_anns.append({"id": len(dt_anns) + 1, "image_id": image_id,
                        "category_id": category_id, "segmentation": rle, "score": score,
                        "area": int(mask_utils.area(rle)), "iscrowd": 0,
                        "bbox": mask_utils.toBbox(rle).tolist()})

    all_thresholds = sorted(set(iou_thresholds) | set(COCO_IOU_THRESHOLDS))
    precision = _coco_precision(images, categories, gt_anns, dt_anns, all_thresholds, max_dets)
    # precision: [T, R(101), K]; -1 for classes without GT instances

    def class_ap(t):
        return precision[all_thresholds.index(t)].mean(axis=0)  # [K], -1 where no GT

    def mean_ap(ap):
        valid = ap[ap > -1]
        return float(valid.mean()) if len(valid) else None

    instances = defaultdict(int)
    for a in gt_anns:
        if not a["iscrowd"]:
            instances[a["category_id"]] += 1
    report = {
        "protocol": {
            "name": "voc" if (void_removal or score_cutoff > 0) else "coco",
            "void_removal": bool(void_removal),
            "score_cutoff": float(score_cutoff),
            "iou_thresholds": iou_thresholds,
            "max_dets": int(max_dets),
            "ap": "COCO 101-point interpolated precision (pycocotools COCOeval, segm, area "
                  "all); a match needs IoU >= threshold; crowd GT ignored",
            "class_mean": "over classes with at least one GT instance",
            "coco_ap_thresholds": list(COCO_IOU_THRESHOLDS),
            "abo": "class-agnostic: best IoU of each non-crowd GT instance with any prediction "
                   "of its image (after the score cut-off, no maxDets limit), averaged over "
                   "GT instances",
            "units": "fractions in [0, 1]",
        },
    }
    for t in iou_thresholds:
        report[f"mAP@{t:g}"] = mean_ap(class_ap(t))
    report["AP"] = mean_ap(np.mean([class_ap(t) for t in COCO_IOU_THRESHOLDS], axis=0)
                           if precision.shape[2] else np.zeros(0))
    report["ABO"] = average_best_overlap(gt_anns, dt_anns)
    per_class_thresholds = sorted(set(iou_thresholds) | {0.5})
    report["per_class"] = {
        c["name"]: {**{f"AP@{t:g}": (float(class_ap(t)[k]) if instances[c["id"]] else None)
                       for t in per_class_thresholds},
                    "instances": instances[c["id"]]}
        for k, c in enumerate(categories)}
    report.update({
        "images": len(images),
        "predictions": len(dt_anns),
        "predictions_below_cutoff": below_cutoff,
        "gt_instances": sum(instances.values()),
        "gt_void_images": len(keep),
    })
    log.info("evaluated %d images, %d GT instances, %d predictions (%d below the score "
             "cut-off %g): %s, AP %s, ABO %s", len(images), report["gt_instances"],
             len(dt_anns), below_cutoff, score_cutoff,
             ", ".join(f"mAP@{t:g} {_fmt(report[f'mAP@{t:g}'])}" for t in iou_thresholds),
             _fmt(report["AP"]), _fmt(report["ABO"]))
    return report


def average_best_overlap(gt_anns, dt_anns):
    """Mean over non-crowd GT instances of the best IoU with any prediction of the same image
    (class-agnostic); None when there is no GT instance."""
    dts = defaultdict(list)
    for d in dt_anns:
        dts[d["image_id"]].append(d["segmentation"])
    gts = defaultdict(list)
    for g in gt_anns:
        if not g["iscrowd"]:
            gts[g["image_id"]].append(g["segmentation"])
    best = []
    for image_id, g in gts.items():
        d = dts.get(image_id)
        if not d:
            best.extend([0.0] * len(g))
            continue
        ious = np.asarray(mask_utils.iou(d, g, [0] * len(g))).reshape(len(d), len(g))
        best.extend(ious.max(axis=0).tolist())
    return float(np.mean(best)) if best else None


def _coco_precision(images, categories, gt_anns, dt_anns, iou_thresholds, max_dets):
    """COCOeval's accumulated precision [T, 101, K] (one area range, one maxDets)."""
    base = {"images": list(images.values()), "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {**base, "annotations": gt_anns}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {**base, "annotations": dt_anns}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.imgIds = sorted(images)
        ev.params.catIds = [c["id"] for c in categories]
        ev.params.iouThrs = np.array(iou_thresholds, dtype=float)
        ev.params.maxDets = [int(max_dets)]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, 0]


def _check_prediction(p, images, cat_ids, where):
    if not isinstance(p, dict) or not all(k in p for k in ("image_id", "category_id",
                                                           "segmentation", "score")):
        raise InputError(where, f"a prediction lacks image_id/category_id/segmentation/score: "
                                f"{str(p)[:200]}")
    image_id, category_id = int(p["image_id"]), int(p["category_id"])
    if image_id not in images:
        raise InputError(where, f"prediction for image id {image_id}, which is not in the "
                                f"ground truth (are GT and predictions of the same split?)")
    if category_id not in cat_ids:
        raise InputError(where, f"prediction with unknown category_id {category_id}")
    return image_id, category_id


def _remove_void(rle, keep):
    return rle if keep is None else mask_utils.merge([rle, keep], intersect=True)


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"
