"""`tag2mask classifier train`: the peak classifier, trained on the manifest's tags (train split).

    tag2mask classifier train --manifest M --config C --out-dir results/<run>/classifier

Writes classifier.pt (the final model), last.pt (the training checkpoint after every epoch;
a restarted run resumes from it) and log.jsonl (one line per epoch). Details:
tag2mask.classifier.train. --processes N > 1 trains on N processes (torchrun,
DistributedDataParallel, one GPU each on CUDA; tag2mask.core.distributed).
"""

from ..core import cli_args as cli
from ..core.launch import relaunch, training_processes


def add_actions(actions):
    p = cli.add_action(actions, "train", "train the peak classifier on image-level tags", __doc__,
                       run_train)
    cli.add_training(p, "classifier", "classifier.pt, last.pt and log.jsonl")


def run_train(args):
    from ..core.config import stage_options

    options = stage_options(args.config, "classifier", "train", args.runtime)
    relaunch(training_processes(args, options))  # (before torch is imported)
    from .train import train_classifier

    train_classifier(args.manifest, options, args.out_dir, threads=args.threads,
                     progress=not args.no_progress)
