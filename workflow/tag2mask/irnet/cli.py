"""`tag2mask irnet ...`: what IRNet's pseudo masks (Ahn et al. 2019; config
pseudo_masks.method: irnet) are made from, on the same classifier as the other methods.

    tag2mask irnet cams --manifest M --checkpoint classifier.pt --config C --shard i \\
        --num-shards N --out cams/shards/i.h5
    tag2mask irnet gather --out cams/cams.h5 cams/shards/*.h5
    tag2mask irnet relations --cams cams.h5 --manifest M --config C \\
        --out irnet/relation_seeds.h5
    tag2mask irnet train --manifest M --checkpoint classifier.pt --seeds relation_seeds.h5 \\
        --config C --out-dir irnet/

cams: multi-scale + flip class activation maps of the train images' tagged classes
(tag2mask.irnet.class_maps); relations: confident foreground / background seeds, the source
of the inter-pixel relation labels (tag2mask.irnet.seeds); train: the boundary and
displacement branches from those relations, checkpoint every epoch, resumes, --processes N
for N processes (torchrun; tag2mask.irnet.train). The pseudo masks themselves (centroids,
seeds, sparse random walk: tag2mask.irnet.instances) are `tag2mask pseudo_masks make --method
irnet`. No action reads ground truth. `--config` takes the `irnet` section.
"""

import logging
from pathlib import Path

from ..core import cli_args as cli
from ..core.launch import relaunch, training_processes

log = logging.getLogger(__name__)


def add_actions(actions):
    p = cli.add_action(actions, "cams", "multi-scale class activation maps of one shard", __doc__,
                       run_cams)
    cli.add_manifest(p)
    p.add_argument("--checkpoint", required=True, type=Path, help="classifier.pt")
    cli.add_config(p, "irnet")
    cli.add_shard(p)
    p.add_argument("--out", required=True, type=Path, help="the cams store (.h5)")
    cli.add_threads(p)
    cli.add_progress(p)

    cli.add_gather(actions, "cams")

    p = cli.add_action(actions, "relations", "relation seeds from the CAMs", __doc__,
                       run_relations)
    p.add_argument("--cams", required=True, type=Path, help="the gathered cams store")
    cli.add_manifest(p)
    cli.add_config(p, "irnet")
    p.add_argument("--out", required=True, type=Path, help="the relation-seeds store (.h5)")
    cli.add_progress(p)

    p = cli.add_action(actions, "train", "train IRNet's boundary and displacement branches",
                       __doc__, run_train)
    p.add_argument("--checkpoint", required=True, type=Path, help="classifier.pt (backbone)")
    p.add_argument("--seeds", required=True, type=Path, help="the relation-seeds store")
    cli.add_training(p, "irnet", "irnet.pt, last.pt and log.jsonl")


def run_cams(args):
    from ..classifier.model import load_for_action
    from ..core.shards import select_shard
    from .class_maps import write_cams

    cli.set_threads(args.threads)
    options, manifest, device, model, meta = load_for_action(
        "irnet", "cams", args.config, args.runtime, args.manifest, args.checkpoint)
    input_size = options["input_size"] or meta["input_size"]
    records, _ = select_shard(manifest, ["train"], args.shard, args.num_shards, "irnet")
    log.info("shard %d/%d: %d images on %s, input %d px, classifier %s (%s)", args.shard,
             args.num_shards, len(records), device, input_size, args.checkpoint,
             meta["backbone"])
    write_cams(records, manifest, model, options, input_size, args.out, device,
               progress=not args.no_progress,
               root_attrs={"shard": args.shard, "num_shards": args.num_shards})


def run_relations(args):
    from ..core.config import stage_options
    from .seeds import write_seeds

    write_seeds(args.cams, args.manifest,
                stage_options(args.config, "irnet", "relations", args.runtime), args.out,
                progress=not args.no_progress)


def run_train(args):
    from ..core.config import stage_options

    options = stage_options(args.config, "irnet", "train", args.runtime)
    relaunch(training_processes(args, options))  # (before torch is imported)
    from .train import train_irnet

    train_irnet(args.manifest, args.checkpoint, args.seeds, options, args.out_dir,
                threads=args.threads, progress=not args.no_progress)
