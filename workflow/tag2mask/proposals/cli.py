"""`tag2mask proposals ...`: mask proposals per image, and their quality.

    tag2mask proposals make --manifest M --config C --shard i --num-shards N --out shards/i.h5
    tag2mask proposals import --manifest M --json J --out X.h5 [--config C]
    tag2mask proposals gather --out proposals.h5 shards/*.h5
    tag2mask proposals evaluate --proposals P.h5 --gt train=gt/train.json --out quality.json

make writes the proposals of one shard of the images of the configured splits, with the
built-in generator (method builtin, tag2mask.proposals.builtin) or from the configured
external file (method external, tag2mask.proposals.external, which `import` also reads;
tag2mask.proposals.make.METHODS).
Store layout: docs/formats.md and tag2mask.proposals.make. evaluate reads ground truth and is
an evaluation stage only (tag2mask.proposals.quality).
"""

import json
import logging
from pathlib import Path

from ..core import cli_args as cli
from ..core.errors import InputError

log = logging.getLogger(__name__)


def add_actions(actions):
    p = cli.add_action(actions, "make", "mask proposals of one shard of the images", __doc__,
                       run_make)
    cli.add_manifest(p)
    cli.add_config(p, "proposals")
    cli.add_shard(p)
    p.add_argument("--out", required=True, type=Path, help="the proposals store (.h5)")

    p = cli.add_action(actions, "import", "import external proposals (COCO-RLE JSON)", __doc__,
                       run_import)
    cli.add_manifest(p)
    p.add_argument("--json", required=True, type=Path,
                   help="{image id or file name: [{segmentation: RLE dict, score}]}")
    cli.add_config(p, "proposals", required=False)
    p.add_argument("--out", required=True, type=Path, help="the proposals store (.h5)")

    cli.add_gather(actions, "proposals")

    p = cli.add_action(actions, "evaluate", "ABO / recall of a proposals store vs GT (evaluation)",
                       __doc__, run_evaluate)
    p.add_argument("--proposals", required=True, type=Path, help="proposals store (.h5)")
    p.add_argument("--gt", required=True, nargs="+", metavar="SPLIT=FILE",
                   help="ground truth per split: COCO instances JSON (crowd excluded)")
    p.add_argument("--out", required=True, type=Path, help="quality JSON")


def run_make(args):
    from ..core.config import stage_options
    from ..core.shards import select_shard
    from ..dataset.manifest import read_manifest
    from .make import METHODS, store_writer

    options = stage_options(args.config, "proposals", "make", args.runtime)
    manifest = read_manifest(args.manifest)
    records, _ = select_shard(manifest, options["splits"], args.shard, args.num_shards,
                              "proposals.splits")
    with store_writer(args.out, manifest, options, options["method"], args.shard,
                      args.num_shards) as w:
        METHODS[options["method"]](records, manifest, options, w)


def run_import(args):
    from ..core.config import stage_options
    from ..core.shards import select_shard
    from ..dataset.manifest import read_manifest
    from .external import write_imported
    from .make import store_writer

    options = stage_options(args.config, "proposals", "import", args.runtime)
    manifest = read_manifest(args.manifest)
    records, _ = select_shard(manifest, options["splits"], 0, 1, "proposals.splits")
    with store_writer(args.out, manifest, options, "external", 0, 1) as w:
        write_imported(records, manifest.images, options, args.json, w)


def run_evaluate(args):
    from ..core.atomic import write_json
    from ..core.store import StoreReader
    from .quality import evaluate_store

    splits = {}
    for item in args.gt:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise InputError("--gt", f"expected SPLIT=FILE, found {item!r}")
        splits[split] = path
    with StoreReader(args.proposals, "proposals") as r:
        method = r.attrs.get("method")
        options = json.loads(r.attrs.get("options", "{}"))
    report = {"proposals": str(args.proposals), "method": method, "options": options,
              "splits": {}}
    for split, path in splits.items():
        report["splits"][split] = evaluate_store(args.proposals, path)
        log.info("%s: %s", split, json.dumps(report["splits"][split]))
    write_json(args.out, report)
