"""`tag2mask verification ...`: the classifier checks each pseudo mask; its confidence is
rescored (tag2mask.verification.rescore).

    tag2mask verification rescore --store shards/i.h5 --checkpoint classifier.pt \\
        --manifest M --config C --out verified/i.h5

Reads a pseudo-mask store (retrieval's or IRNet's), the classifier and the images (never
ground truth) and writes the same store with `scores` replaced by the geometric mean of the
old confidence and the classifier's probability for the mask's class, over two views of the
mask (its box with a margin; the image outside the mask blanked).
"""

import logging
from pathlib import Path

from ..core import cli_args as cli

log = logging.getLogger(__name__)


def add_actions(actions):
    p = cli.add_action(actions, "rescore", "pseudo masks -> the same, rescored by the classifier",
                       __doc__, run_rescore)
    p.add_argument("--store", required=True, type=Path, help="pseudo-mask store (.h5)")
    p.add_argument("--checkpoint", required=True, type=Path, help="classifier checkpoint")
    cli.add_manifest(p)
    cli.add_config(p, "verification")
    p.add_argument("--out", required=True, type=Path, help="the rescored store (.h5)")
    cli.add_threads(p, default=1)
    cli.add_progress(p)


def run_rescore(args):
    from ..classifier.model import load_for_action
    from .rescore import rescore_store

    cli.set_threads(args.threads)
    options, manifest, device, model, meta = load_for_action(
        "verification", "rescore", args.config, args.runtime, args.manifest, args.checkpoint)
    options["input_size"] = options["input_size"] or meta["input_size"]
    log.info("%s: classifier %s (%s) at %d px on %s", args.store, args.checkpoint,
             meta["backbone"], options["input_size"], device)
    rescore_store(args.store, manifest, model, options, args.out, device,
                  score_upsample=meta["config"].get("upsample", 1),
                  progress=not args.no_progress)
