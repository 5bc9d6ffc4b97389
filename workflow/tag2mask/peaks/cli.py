"""`tag2mask peaks ...`: class peaks and peak response maps of the trained classifier.

    tag2mask peaks extract --manifest M --checkpoint C --config X --shard i --num-shards N \\
        --out shards/i.h5 [--panels DIR]
    tag2mask peaks gather --out peaks.h5 shards/*.h5
    tag2mask peaks evaluate --peaks peaks.h5 --gt gt/train.json --out quality.json

extract writes the peaks store (kind "peaks", docs/formats.md) of one shard of the images of
the configured splits (`peaks.splits`, manifest order), and a panel PNG for each of the first
`peaks.panels` images of those splits that fall in the shard (tag2mask.peaks.extract).
evaluate reads ground truth and is an evaluation stage only (tag2mask.peaks.quality).
"""

import logging
from pathlib import Path

from ..core import cli_args as cli

log = logging.getLogger(__name__)


def add_actions(actions):
    p = cli.add_action(actions, "extract", "class peaks and peak response maps of one shard",
                       __doc__, run_extract)
    cli.add_manifest(p)
    p.add_argument("--checkpoint", required=True, type=Path, help="classifier.pt")
    cli.add_config(p, "peaks")
    cli.add_shard(p)
    p.add_argument("--out", required=True, type=Path, help="the peaks store (.h5)")
    p.add_argument("--panels", type=Path, default=None, help="folder for the panel PNGs")
    cli.add_threads(p)
    cli.add_progress(p)

    cli.add_gather(actions, "peaks")

    p = cli.add_action(actions, "evaluate", "peak quality against ground truth (evaluation)",
                       __doc__, run_evaluate)
    p.add_argument("--peaks", required=True, type=Path, help="the gathered peaks store")
    p.add_argument("--gt", required=True, nargs="+", type=Path,
                   help="COCO ground-truth file(s) of the splits in the store")
    p.add_argument("--out", required=True, type=Path, help="the quality JSON")


def run_extract(args):
    from ..classifier.model import load_for_action
    from ..core.cpu_memory import keep_freed_memory
    from ..core.shards import select_shard
    from .extract import extract, resolve_response_layer

    keep_freed_memory()  # the batched backward's large tensors: no page faults on each reuse
    cli.set_threads(args.threads)
    options, manifest, device, model, meta = load_for_action(
        "peaks", "extract", args.config, args.runtime, args.manifest, args.checkpoint)
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


def run_evaluate(args):
    from ..core.atomic import write_json
    from .quality import peak_quality

    quality = peak_quality(args.peaks, args.gt)
    write_json(args.out, quality)
    log.info("%d images, %d peaks: precision %s, instance recall %s, duplicates %s, "
             "classification mAP %s", quality["images"], quality["peaks"],
             *(_fmt(quality[k]) for k in ("peak_precision", "instance_recall", "duplicate_rate",
                                          "classification_mAP")))
    r = quality["response_maps"]
    log.info("response maps: cosine of different instances' peaks %s, own share %s "
             "(by area %s), argmax in own instance %s", *(_fmt(r[k]) for k in (
                 "different_instances_cosine", "own_share", "own_share_by_area",
                 "argmax_in_own")))


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"
