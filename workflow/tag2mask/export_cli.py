"""`tag2mask export-coco`: write a pseudo-mask store as a COCO results JSON (the input of
`tag2mask evaluate` and of any COCO tool), or with --as-instances as a COCO instances JSON
(images + categories + annotations) that pycocotools COCO() loads as a dataset."""

import logging
from pathlib import Path

from .atomic import write_json
from .evaluation import pseudo_masks_to_results, results_to_instances
from .manifest import read_manifest
from .store import StoreReader

log = logging.getLogger(__name__)


def add_command(sub):
    p = sub.add_parser("export-coco", help="pseudo-mask store -> COCO results (or instances) JSON",
                       description=__doc__)
    p.add_argument("--store", required=True, type=Path, help="pseudo-mask store (.h5)")
    p.add_argument("--manifest", required=True, type=Path,
                   help="dataset manifest (COCO image ids, class names, image sizes)")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--as-instances", action="store_true",
                   help="write a COCO instances JSON (every image of the store, with or without "
                        "masks) instead of a results list")
    p.set_defaults(func=run)


def run(args):
    manifest = read_manifest(args.manifest)
    results = pseudo_masks_to_results(args.store, manifest)
    if args.as_instances:
        with StoreReader(args.store, "pseudo_masks") as store:
            image_ids = store.image_ids
        write_json(args.out, results_to_instances(results, manifest, image_ids), indent=None)
    else:
        write_json(args.out, results, indent=None)
    log.info("wrote %d masks to %s", len(results), args.out)
