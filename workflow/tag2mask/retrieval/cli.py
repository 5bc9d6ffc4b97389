"""`tag2mask retrieval ...`: one mask proposal per class peak (PRM's score or WISE's rule) ->
pseudo masks.

    tag2mask retrieval select --peaks peaks.h5 --proposals proposals.h5 --manifest M \\
        --config C --shard i --num-shards N --out shards/i.h5 [--panels DIR]
    tag2mask retrieval gather --out pseudo_masks.h5 shards/*.h5

select reads a peaks store and a proposals store (never ground truth) and writes one shard of
the pseudo-mask store (tag2mask.retrieval.pseudo_masks), vectorised over all peaks and
proposals of an image (tag2mask.retrieval.select).
"""

from pathlib import Path

from ..core.cli_args import add_action, add_config, add_gather, add_shard, add_threads, set_threads


def add_actions(actions):
    p = add_action(actions, "select", "peaks + proposals -> pseudo masks (one shard)", __doc__,
                   run_select)
    p.add_argument("--peaks", required=True, type=Path, help="peaks store (kind 'peaks')")
    p.add_argument("--proposals", required=True, type=Path,
                   help="proposals store (kind 'proposals')")
    p.add_argument("--manifest", required=True, type=Path,
                   help="dataset manifest.json (image list, sizes, class names)")
    add_config(p, "retrieval")
    add_shard(p)
    p.add_argument("--out", required=True, type=Path, help="output pseudo-mask store (.h5)")
    p.add_argument("--panels", type=Path, default=None,
                   help="folder for pictures of the chosen proposals of the first images")
    p.add_argument("--panels-max", type=int, default=None,
                   help="images drawn into --panels (default: the config's panel_images)")
    add_threads(p, default=1)

    add_gather(actions, "pseudo_masks")


def run_select(args):
    from ..core.config import section_options
    from .pseudo_masks import write_shard

    set_threads(args.threads)
    options = section_options(args.config, "retrieval")
    if args.panels is not None:
        args.panels.mkdir(parents=True, exist_ok=True)
    write_shard(args.peaks, args.proposals, args.manifest, options, args.shard, args.num_shards,
                args.out, panels_dir=args.panels,
                panels_max=options["panel_images"] if args.panels_max is None else args.panels_max)
