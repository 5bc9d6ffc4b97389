"""`tag2mask pseudo_masks ...`: the pseudo masks Mask R-CNN trains on, by any method.

    tag2mask pseudo_masks make --method retrieval --input peaks=peaks.h5 \\
        --input proposals=proposals.h5 --manifest M --config C --shard i --num-shards N \\
        --out unverified/i.h5 [--panels DIR]
    tag2mask pseudo_masks gather --out pseudo_masks.h5 shards/*.h5

make writes one shard of the pseudo-mask store (docs/formats.md) with the method the config's
`pseudo_masks.method` names (a plug-in: tag2mask.pseudo_masks.methods lists them and their
inputs); --config takes the method's config section (the section of its name). No method reads
ground truth.
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
    from .methods import get_method

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
