"""`tag2mask evaluate`: score instance masks (COCO results JSON or a pseudo-mask store)
against COCO ground truth; writes mAP@IoU thresholds, COCO AP, ABO and per-class AP as JSON."""

import logging
from pathlib import Path

from .atomic import write_json
from .config import section_options
from .errors import InputError
from .evaluation import evaluate, read_ground_truth, read_predictions
from .manifest import read_manifest

log = logging.getLogger(__name__)


def add_command(sub):
    p = sub.add_parser("evaluate", help="mask mAP@0.25/0.5/0.75, COCO AP and ABO of predictions "
                                        "against ground truth", description=__doc__)
    p.add_argument("--gt", required=True, type=Path,
                   help="ground truth: COCO instances JSON (results/<run>/dataset/gt/<split>.json)")
    p.add_argument("--predictions", required=True, type=Path,
                   help="COCO results JSON (list of image_id, category_id, segmentation, score) "
                        "or a pseudo-mask store (.h5)")
    p.add_argument("--manifest", type=Path,
                   help="dataset manifest: needed for a .h5 store (COCO image ids); when given, "
                        "also checked against the ground truth's image names")
    p.add_argument("--config", required=True,
                   help="a workflow config YAML (its `evaluation` section is used), or that "
                        "section as inline JSON")
    p.add_argument("--out", required=True, type=Path, help="evaluation JSON to write")
    p.set_defaults(func=run)


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


def run(args):
    options = section_options(args.config, "evaluation")
    gt = read_ground_truth(args.gt)
    manifest = read_manifest(args.manifest) if args.manifest else None
    if manifest is not None:
        check_manifest_matches(gt, manifest, args.gt)
    predictions = read_predictions(args.predictions, manifest)
    report = evaluate(gt, predictions, iou_thresholds=options["iou_thresholds"],
                      max_dets=options["max_dets"], void_removal=options["void_removal"],
                      score_cutoff=options["score_cutoff"], where=args.predictions)
    report["inputs"] = {"ground_truth": str(args.gt), "predictions": str(args.predictions)}
    write_json(args.out, report)
    log.info("wrote %s", args.out)
