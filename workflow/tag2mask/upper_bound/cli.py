"""`tag2mask upper_bound gt-masks`: EVALUATION SIDE ONLY. The ground-truth masks of the training
images as a "pseudo_masks" store, for the upper bound: the same Mask R-CNN, same schedule,
trained on them (`tag2mask maskrcnn train`), shows how far the weakly supervised pipeline is
from full supervision on this dataset. No weakly supervised stage reads its output.

    tag2mask upper_bound gt-masks --gt gt/train.json --manifest M --out gt_training_masks.h5

Layout: tag2mask.upper_bound.gt_masks.
"""

from pathlib import Path

from ..core import cli_args as cli


def add_actions(actions):
    p = cli.add_action(actions, "gt-masks", "(upper bound, evaluation side) GT masks of a split as "
                       "a pseudo_masks store", __doc__, run_gt_masks)
    p.add_argument("--gt", required=True, type=Path,
                   help="ground truth COCO instances JSON of the training split "
                        "(results/<run>/dataset/gt/train.json)")
    p.add_argument("--manifest", required=True, type=Path, help="dataset manifest.json")
    p.add_argument("--split", default="train", help="manifest split the GT covers (default train)")
    p.add_argument("--out", required=True, type=Path, help="pseudo_masks store (.h5) to write")


def run_gt_masks(args):
    from .gt_masks import gt_to_pseudo_mask_store

    gt_to_pseudo_mask_store(args.gt, args.manifest, args.out, args.split)
