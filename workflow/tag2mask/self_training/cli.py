"""`tag2mask self_training masks`: the next self-training round's pseudo masks.

    tag2mask self_training masks --predictions P.json --peaks peaks.h5 --previous prev.h5 \\
        --manifest M --config C --out round_<r>/pseudo_masks.h5

The previous round's Mask R-CNN predictions on the training images (never ground truth),
checked against the image tags and class peaks and merged with the previous round's pseudo
masks (the rule: tag2mask.self_training.merge). Each round's Mask R-CNN is then trained and
predicted with `tag2mask maskrcnn train|predict`.
"""

from pathlib import Path

from ..core import cli_args as cli


def add_actions(actions):
    p = cli.add_action(actions, "masks", "next self-training round's pseudo masks: predictions on "
                       "the training images merged with peaks and the previous "
                                     "pseudo masks", __doc__, run_masks)
    p.add_argument("--predictions", required=True, type=Path,
                   help="COCO results JSON of the previous round's model on the train split")
    p.add_argument("--peaks", required=True, type=Path, help="peaks store (kind 'peaks')")
    p.add_argument("--previous", required=True, type=Path,
                   help="the previous round's pseudo-mask store")
    p.add_argument("--manifest", required=True, type=Path, help="dataset manifest.json")
    cli.add_config(p, "self_training")
    p.add_argument("--out", required=True, type=Path, help="pseudo-mask store (.h5) to write")


def run_masks(args):
    from ..core.config import stage_options
    from .merge import merge_round

    merge_round(args.predictions, args.peaks, args.previous, args.manifest,
                stage_options(args.config, "self_training", "masks", args.runtime), args.out)
