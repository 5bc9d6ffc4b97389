"""`tag2mask pseudo_masks ...`: the pseudo masks Mask R-CNN trains on, by any method.

    tag2mask pseudo_masks make --method retrieval --input peaks=peaks.h5 \\
        --input proposals=proposals.h5 --manifest M --config C --shard i --num-shards N \\
        --out unverified/i.h5 [--panels DIR]
    tag2mask pseudo_masks gather --out pseudo_masks.h5 shards/*.h5
    tag2mask pseudo_masks export-coco --store pseudo_masks.h5 --manifest M --min-score 0.5 \\
        --out pseudo_masks.coco.json [--as-results]

make writes one shard of the pseudo-mask store (docs/formats.md) with the method the config's
`pseudo_masks.method` names (a plug-in: tag2mask.core.methods lists them and their
inputs); --config takes the method's config section (the section of its name). No method reads
ground truth. export-coco writes the masks whose confidence reaches --min-score as a COCO
instances JSON (images, categories, annotations with RLE masks, boxes, areas and the scores):
a dataset any detector that reads COCO trains on, or with --as-results a COCO results list.
"""

import logging
from pathlib import Path

from ..core import cli_args as cli
from ..core.errors import InputError

log = logging.getLogger(__name__)


def add_actions(actions):
    p = cli.add_action(actions, "make", "one shard of the pseudo masks, by a method", __doc__,
                       run_make)
    p.add_argument("--method", required=True,
                   help="the method (pseudo_masks.method), e.g. retrieval or irnet")
    p.add_argument("--input", nargs="+", action="extend", default=[], metavar="NAME=PATH",
                   help="an input the method reads (repeatable; the names its Method lists)")
    cli.add_manifest(p)
    cli.add_config(p, "the method's")
    cli.add_shard(p)
    p.add_argument("--out", required=True, type=Path, help="the pseudo-mask shard store (.h5)")
    p.add_argument("--panels", type=Path, default=None,
                   help="folder for pictures of the first images (where the method draws any)")
    cli.add_threads(p, default=1)
    cli.add_progress(p)

    cli.add_gather(actions, "pseudo_masks")

    p = cli.add_action(actions, "export-coco", "pseudo masks as a COCO instances JSON",
                       __doc__, run_export_coco)
    p.add_argument("--store", required=True, type=Path, help="pseudo-mask store (.h5)")
    cli.add_manifest(p)
    p.add_argument("--min-score", type=float, default=0.0,
                   help="leave out masks whose confidence is below this (default 0: all)")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--as-results", action="store_true",
                   help="a COCO results list (image_id, category_id, segmentation, score) "
                        "instead of an instances JSON")


def method_inputs(method, items):
    """NAME=PATH items -> {name: Path}, exactly the inputs `method` names."""
    given = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError("--input", f"expected NAME=PATH, got {item!r}")
        given[name] = Path(path)
    if set(given) != set(method.inputs):
        raise InputError("--input", f"method {method.name} takes the inputs "
                                    f"{sorted(method.inputs)}, given {sorted(given)}")
    return given


def run_make(args):
    from ..core.config import stage_options
    from ..core.methods import get_method

    cli.set_threads(args.threads)
    try:
        method = get_method(args.method)
    except KeyError as e:
        raise InputError("--method", e.args[0]) from None
    inputs = method_inputs(method, args.input)
    options = stage_options(args.config, method.section, "make", args.runtime)
    if args.panels is not None:
        args.panels.mkdir(parents=True, exist_ok=True)
    method.load().make_shard(inputs, args.manifest, options, args.shard, args.num_shards, args.out,
                      panels=args.panels, progress=not args.no_progress)


def run_export_coco(args):
    from ..core.atomic import write_json
    from ..core.store import StoreReader
    from ..dataset.manifest import read_manifest
    from ..evaluation.metrics import pseudo_masks_to_results, results_to_instances

    manifest = read_manifest(args.manifest)
    results = pseudo_masks_to_results(args.store, manifest, min_score=args.min_score)
    if args.as_results:
        write_json(args.out, results, indent=None)
    else:
        with StoreReader(args.store, "pseudo_masks") as store:
            image_ids = store.image_ids
        write_json(args.out, results_to_instances(results, manifest, image_ids), indent=None)
    log.info("wrote %d masks with a confidence of at least %g to %s", len(results),
             args.min_score, args.out)
