"""The `tag2mask` console script: `tag2mask <stage> <action> [options]`.

One subcommand per pipeline stage, named like the stage's folder in this package and its
rule file in rules/ (rules/peaks.smk -> tag2mask/peaks/ -> `tag2mask peaks ...`); each
stage's `cli.py` adds its actions. Every action takes explicit files, so any stage can be run
by hand. Stage modules are imported only when the command line names them, so
`tag2mask --help` stays fast.
"""

import argparse
import importlib
import logging
import sys

from .core.errors import InputError

# stage -> help (in pipeline order); the stage's actions live in tag2mask/<stage>/cli.py
STAGES = {
    "dataset": "read a dataset into a manifest and ground truth (prepare)",
    "classifier": "the peak classifier on image-level tags (train)",
    "peaks": "class peaks and peak response maps (extract, gather, evaluate)",
    "proposals": "mask proposals (make, import, gather, evaluate)",
    "irnet": "what IRNet's pseudo masks are made from: CAMs, relation seeds, boundary + "
             "displacement branches (cams, gather, relations, train)",
    "pseudo_masks": "the pseudo masks, by a method: retrieval, irnet, ... (make, gather, "
                    "export-coco)",
    "verification": "the classifier checks each pseudo mask; confidences rescored (rescore)",
    "maskrcnn": "Mask R-CNN on pseudo masks (train, predict)",
    "evaluation": "mAP, COCO AP and ABO against ground truth (score)",
    "upper_bound": "evaluation side: ground-truth masks as a training store (gt-masks)",
    "self_training": "predictions + peaks -> next round's pseudo masks (masks)",
    "report": "the HTML report of a run (build)",
}


def version():
    """The package's version, and the checkout's git commit where there is one."""
    from . import __version__

    commit = git_commit()
    return f"{__version__} (commit {commit})" if commit else __version__


def git_commit():
    """The short git commit of the checkout this package runs from, '+' if it has changes;
    None outside a git checkout."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(here), *a], capture_output=True,
                                        text=True, timeout=10)
        head = run("rev-parse", "--short=12", "HEAD")
        if head.returncode:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_parser(only=None):
    parser = argparse.ArgumentParser(
        prog="tag2mask", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"tag2mask {version()}")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, text in STAGES.items():
        p = stages.add_parser(name, help=text, description=text)
        if only is None or name == only:
            actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
            importlib.import_module(f"tag2mask.{name}.cli").add_actions(actions)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if a in STAGES), None)
    args = build_parser(only=stage).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"tag2mask {args.stage} {args.action}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
