"""`tag2mask retrieve`: pick one mask proposal per class peak (PRM or WISE rule) -> pseudo masks.

Reads a peaks store and a proposals store (never ground truth) and writes one shard of the
pseudo-mask store. Vectorised over all peaks and proposals of an image; see tag2mask.retrieval.
"""

import logging
from pathlib import Path

import torch

from .config import section_options
from .pseudo_masks import write_shard

log = logging.getLogger(__name__)


def add_command(sub):
    p = sub.add_parser("retrieve", help="peaks + proposals -> pseudo masks (one shard)",
                       description=__doc__)
    p.add_argument("--peaks", required=True, type=Path, help="peaks store (kind 'peaks')")
    p.add_argument("--proposals", required=True, type=Path,
                   help="proposals store (kind 'proposals')")
    p.add_argument("--manifest", required=True, type=Path,
                   help="dataset manifest.json (image list, sizes, class names)")
    p.add_argument("--config", required=True,
                   help="a workflow config YAML (its `retrieval` section is used), or that "
                        "section as inline JSON")
    p.add_argument("--shard", type=int, default=0, help="which shard to process (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards")
    p.add_argument("--out", required=True, type=Path, help="output pseudo-mask store (.h5)")
    p.add_argument("--panels", type=Path, default=None,
                   help="folder for pictures of the chosen proposals of the first images")
    p.add_argument("--panels-max", type=int, default=None,
                   help="images drawn into --panels (default: the config's panel_images)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args):
    torch.set_num_threads(max(1, args.threads))
    options = section_options(args.config, "retrieval")
    if args.panels is not None:
        args.panels.mkdir(parents=True, exist_ok=True)
    write_shard(args.peaks, args.proposals, args.manifest, options, args.shard, args.num_shards,
                args.out, panels_dir=args.panels,
                panels_max=options["panel_images"] if args.panels_max is None else args.panels_max)
