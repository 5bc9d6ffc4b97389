"""`tag2mask report build`: one self-contained HTML report of a run (metrics, reference points,
wall times, training curves, pictures). Every input but the manifest is optional: a part
whose file is not given is shown as "not available" with the reason from --missing
(PART=REASON, PART being an option name such as upper-bound-eval), or a generic one."""

import logging
from pathlib import Path

from ..core.atomic import write_text
from ..core.cli_args import add_action
from ..core.config import section_options
from ..core.errors import InputError
from .page import Part, ReportInputs, build_report

log = logging.getLogger(__name__)

# option -> (ReportInputs field, help)
SINGLE = {
    "pseudo-eval": ("pseudo_eval", "evaluation JSON of the pseudo masks (train)"),
    "maskrcnn-train-eval": ("maskrcnn_train_eval",
                            "evaluation JSON of Mask R-CNN on the training images"),
    "maskrcnn-eval": ("maskrcnn_eval", "evaluation JSON of Mask R-CNN on val"),
    "upper-bound-eval": ("upper_bound_eval", "evaluation JSON of the upper bound on val"),
    "classifier-log": ("classifier_log", "classifier log.jsonl"),
    "maskrcnn-log": ("maskrcnn_log", "Mask R-CNN log.jsonl"),
    "upper-bound-log": ("upper_bound_log", "upper-bound Mask R-CNN log.jsonl"),
    "benchmarks": ("benchmarks", "folder of Snakemake benchmark .tsv files"),
    "peaks": ("peaks", "peaks store"),
    "pseudo-masks": ("pseudo_masks", "pseudo-mask store"),
    "predictions-val": ("predictions_val", "Mask R-CNN COCO results on val"),
    "gt-train": ("gt_train", "ground truth of the train split (pictures only)"),
    "gt-val": ("gt_val", "ground truth of the val split (pictures only)"),
}
PER_ROUND = {
    "round-eval": ("round_evals", "self-training round R's evaluation JSON on val"),
    "round-log": ("round_logs", "self-training round R's Mask R-CNN log.jsonl"),
    "round-store": ("round_stores", "self-training round R's pseudo-mask store"),
}


def add_actions(actions):
    p = add_action(actions, "build", "self-contained HTML report of a run", __doc__, run_build)
    p.add_argument("--manifest", required=True, type=Path, help="dataset manifest.json")
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    p.add_argument("--config", default="{}",
                   help="a workflow config YAML (its `report` section is used), or that "
                        "section as inline JSON")
    p.add_argument("--run-name", default="", help="name shown in the title")
    p.add_argument("--eval-split", default="val",
                   help="split the upper bound and self-training rounds were evaluated on")
    for opt, (_, text) in SINGLE.items():
        p.add_argument(f"--{opt}", type=Path, help=text)
    for opt, (_, text) in PER_ROUND.items():
        p.add_argument(f"--{opt}", action="append", default=[], metavar="R=PATH", help=text)
    p.add_argument("--shards", type=int,
                   help="the run's shard count: benchmark files of higher shards (left by an "
                        "earlier run with more shards) are not counted")
    p.add_argument("--missing", action="append", default=[], metavar="PART=REASON",
                   help="why an input is not available (repeatable)")


def _split_pair(text, what):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(what, f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def inputs_from_args(args):
    reasons = dict(_split_pair(m, "--missing") for m in args.missing)
    unknown = set(reasons) - set(SINGLE) - set(PER_ROUND)
    if unknown:
        raise InputError("--missing", f"unknown part(s) {sorted(unknown)}; known: "
                                      f"{sorted(SINGLE) + sorted(PER_ROUND)}")
    inputs = ReportInputs(manifest=args.manifest, run_name=args.run_name,
                          eval_split=args.eval_split, shards=args.shards)
    if "round-eval" in reasons:
        inputs.rounds_reason = reasons["round-eval"]
    for opt, (name, _) in SINGLE.items():
        path = getattr(args, opt.replace("-", "_"))
        setattr(inputs, name, Part(path, reasons.get(opt, "not produced by this run")))
    for opt, (name, _) in PER_ROUND.items():
        parts = {}
        for item in getattr(args, opt.replace("-", "_")):
            r, path = _split_pair(item, f"--{opt}")
            try:
                parts[int(r)] = Part(Path(path))
            except ValueError:
                raise InputError(f"--{opt}", f"round {r!r} is not an integer") from None
        setattr(inputs, name, parts)
    return inputs


def run_build(args):
    options = section_options(args.config, "report")
    text = build_report(inputs_from_args(args), options)
    write_text(args.out, text)
    log.info("wrote %s (%.0f kB)", args.out, len(text) / 1024)
