"""`tag2mask evaluation ...`: instance masks scored against COCO ground truth.

    tag2mask evaluation score --gt gt/val.json --predictions P.json|store.h5 [--manifest M] \\
        --config C --out evaluation.json

score writes mAP at the configured IoU thresholds, COCO AP, ABO and per-class AP as JSON, for
a COCO results JSON or a pseudo-mask store (tag2mask.evaluation.metrics documents the
protocol). A pseudo-mask store as COCO JSON: `tag2mask pseudo_masks export-coco`.
"""

import logging
from pathlib import Path

from ..core import cli_args as cli

log = logging.getLogger(__name__)


def add_actions(actions):
    p = cli.add_action(actions, "score", "mask mAP@0.25/0.5/0.75, COCO AP and ABO of predictions "
                       "against ground truth", __doc__, run_score)
    p.add_argument("--gt", required=True, type=Path,
                   help="ground truth: COCO instances JSON (results/<run>/dataset/gt/<split>.json)")
    p.add_argument("--predictions", required=True, type=Path,
                   help="COCO results JSON (list of image_id, category_id, segmentation, score) "
                        "or a pseudo-mask store (.h5)")
    p.add_argument("--manifest", type=Path,
                   help="dataset manifest: needed for a .h5 store (COCO image ids); when given, "
                        "also checked against the ground truth's image names")
    cli.add_config(p, "evaluation")
    p.add_argument("--out", required=True, type=Path, help="evaluation JSON to write")


def run_score(args):
    from ..core.atomic import write_json
    from ..core.config import stage_options
    from ..dataset.manifest import read_manifest
    from .metrics import check_manifest_matches, evaluate, read_ground_truth, read_predictions

    options = stage_options(args.config, "evaluation", "score", args.runtime)
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
