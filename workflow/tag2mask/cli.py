"""The `tag2mask` console script: one subcommand per stage, each with explicit file arguments.

Each stage module defines `add_command(subparsers)`, which adds its subparser and sets
`func` (called with the parsed arguments). Modules are imported only when the command
line needs them, so `tag2mask --help` stays fast.
"""

import argparse
import importlib
import logging
import sys

from .errors import InputError

# subcommand -> module that implements it (in pipeline order)
COMMANDS = {
    "prepare-dataset": "tag2mask.datasets.cli",
    "train-classifier": "tag2mask.train_classifier",
    "extract-peaks": "tag2mask.peaks_cli",
    "evaluate-peaks": "tag2mask.peaks_quality",
    "propose": "tag2mask.proposals_cli",
    "import-proposals": "tag2mask.proposals_import",
    "evaluate-proposals": "tag2mask.proposals_quality",
    "gather": "tag2mask.gather_cli",
    "retrieve": "tag2mask.retrieval_cli",
    "export-coco": "tag2mask.export_cli",
    "train-maskrcnn": "tag2mask.train_maskrcnn",
    "predict": "tag2mask.predict",
    "evaluate": "tag2mask.evaluate_cli",
    "gt-training-masks": "tag2mask.upper_bound",
    "self-train-masks": "tag2mask.self_training",
    "report": "tag2mask.report_cli",
}


def build_parser(only=None):
    parser = argparse.ArgumentParser(
        prog="tag2mask",
        description="Instance segmentation from image-level labels. Each subcommand is one "
                    "stage of the Snakemake workflow and can be run by hand.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_command(sub)
        else:
            sub.add_parser(name, help=f"(see `tag2mask {name} --help`)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(only=command).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"tag2mask {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
