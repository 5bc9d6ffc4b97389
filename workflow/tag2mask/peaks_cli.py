"""`tag2mask extract-peaks`: the peaks store of one shard of the images.

    tag2mask extract-peaks --manifest M --checkpoint C --config X --shard i --num-shards N \\
        --out shards/i.h5 [--panels DIR]
    tag2mask gather --kind peaks --out peaks.h5 shards/*.h5
    tag2mask evaluate-peaks --peaks peaks.h5 --gt gt/train.json --out quality.json

extract-peaks writes the peaks store (kind "peaks", docs/formats.md) of one shard of the
images of the configured splits (`peaks.splits`, manifest order), and a panel PNG for each of
the first `peaks.panels` images of those splits that fall in the shard. evaluate-peaks reads
ground truth and is an evaluation stage only (tag2mask.peaks_quality).
"""

import argparse
import logging
from pathlib import Path

import torch

from .classifier import load_classifier
from .config import section_options
from .devices import resolve_device
from .manifest import read_manifest
from .shards import select_shard

log = logging.getLogger(__name__)


def add_command(sub):
    p = sub.add_parser("extract-peaks", help="class peaks and peak response maps of one shard",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--checkpoint", required=True, type=Path, help="classifier.pt")
    p.add_argument("--config", required=True,
                   help="a workflow config YAML (its `peaks` section is used), or that section "
                        "as inline JSON")
    p.add_argument("--shard", type=int, default=0, help="0-based shard index (default 0)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (default 1)")
    p.add_argument("--out", required=True, type=Path, help="the peaks store (.h5)")
    p.add_argument("--panels", type=Path, default=None, help="folder for the panel PNGs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)




def run_extract(args):
    from .cpu_memory import keep_freed_memory
    from .peaks import extract, resolve_response_layer

    keep_freed_memory()  # the batched backward's large tensors: no page faults on each reuse
    if args.threads:
        torch.set_num_threads(args.threads)
    options = section_options(args.config, "peaks")
    manifest = read_manifest(args.manifest)
    device = resolve_device(options["device"], "peaks.device")
    model, meta = load_classifier(args.checkpoint, device, class_names=manifest.classes)
    model.requires_grad_(False)  # only input gradients are needed
    input_size = options["input_size"] or meta["input_size"]
    options["response_layer"] = resolve_response_layer(options["response_layer"],
                                                       meta["backbone"])
    records, start = select_shard(manifest, options["splits"], args.shard, args.num_shards,
                                  "peaks.splits")
    panel_indices = range(max(0, min(options["panels"] - start, len(records))))
    if args.panels is not None:
        args.panels.mkdir(parents=True, exist_ok=True)
    log.info("shard %d/%d: %d images on %s, input %d px, classifier %s (%s), response maps "
             "at %s", args.shard, args.num_shards, len(records), device, input_size,
             args.checkpoint, meta["backbone"], options["response_layer"] or "the input")
    extract(records, manifest, model, options, args.out, device, input_size,
            panel_dir=args.panels, panel_indices=panel_indices if args.panels else (),
            progress=not args.no_progress,
            root_attrs={"shard": args.shard, "num_shards": args.num_shards},
            score_upsample=meta["config"].get("upsample", 1))
