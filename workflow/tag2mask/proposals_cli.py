"""`tag2mask propose`: the mask proposals store (kind "proposals") of one shard.

    tag2mask propose --manifest M --config C --shard i --num-shards N --out X.h5

Makes the proposals of one shard of the images of the configured splits, with the built-in
generator (method builtin, `tag2mask.proposals`) or from the configured external file
(method external, `tag2mask.proposals_import`; also `tag2mask import-proposals`).
Store layout: docs/formats.md (masks: RLE strings at image resolution, best first; scores:
float32 objectness). Per-image attrs: num_proposals and, for generated proposals, seconds and
cpu_seconds (wall-clock and CPU time of that image, without decoding the image file).
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import digest, section_options
from .errors import InputError
from .images import load_rgb
from .manifest import read_manifest
from .proposals import ProposalSettings, propose
from .proposals_import import write_imported
from .shards import select_shard
from .store import StoreWriter

log = logging.getLogger(__name__)


def add_command(sub):
    p = sub.add_parser("propose", help="mask proposals of one shard of the images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--config", required=True,
                   help="a workflow config YAML (its `proposals` section is used), or that "
                        "section as inline JSON")
    p.add_argument("--shard", type=int, default=0, help="0-based shard index (default 0)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (default 1)")
    p.add_argument("--out", required=True, type=Path, help="the proposals store (.h5)")
    p.set_defaults(func=run_propose)



def write_generated(records, options, writer):
    settings = ProposalSettings.from_options(options)
    seconds = []
    for r in tqdm(records, desc="proposals", unit="image", mininterval=5):
        rgb = load_rgb(r.path)
        if rgb.shape[:2] != (r.height, r.width):
            raise InputError(r.path, f"image is {rgb.shape[1]}x{rgb.shape[0]}, the manifest "
                                     f"says {r.width}x{r.height}")
        t, cpu = time.perf_counter(), time.process_time()
        props = propose(rgb, settings, r.id)
        counts = props.rle()
        dt = time.perf_counter() - t
        seconds.append(dt)
        writer.add(r.id, r.height, r.width, {"masks": counts, "scores": props.scores},
                   attrs={"num_proposals": len(counts), "seconds": dt,
                          "cpu_seconds": time.process_time() - cpu})
    if seconds:
        log.info("%d images, %.3f s per image", len(seconds), float(np.mean(seconds)))


def store_writer(out, manifest, options, method, shard, num_shards):
    return StoreWriter(out, "proposals", manifest.classes, config_digest=digest(options),
                       attrs={"method": method, "options": json.dumps(options, sort_keys=True),
                              "shard": shard, "num_shards": num_shards})


def run_propose(args):
    options = section_options(args.config, "proposals")
    manifest = read_manifest(args.manifest)
    records, _ = select_shard(manifest, options["splits"], args.shard, args.num_shards,
                              "proposals.splits")
    with store_writer(args.out, manifest, options, options["method"], args.shard,
                      args.num_shards) as w:
        if options["method"] == "external":
            write_imported(records, manifest.images, options, options["external_json"], w)
        else:
            write_generated(records, options, w)
