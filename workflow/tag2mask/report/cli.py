"""`tag2mask report build`: one self-contained HTML report of a run (metrics, reference points,
wall times, training curves, pictures; tag2mask.report.page).

    tag2mask report build --out report.html --input manifest=M [--input NAME=PATH ...] \\
        [--config X] [--run-name N] [--eval-split val] [--benchmarks DIR] [--shards N] \\
        [--ground-truth yes|no] [--upper-bound yes|no] [--val-split yes|no] [--rounds R]

Inputs are NAME=PATH pairs (what the Snakemake rule passes: its named inputs). `manifest` is
required; every other input is optional:
{inputs}
    round_eval_<r>, round_log_<r>, round_store_<r>: self-training round r's evaluation JSON,
        Mask R-CNN log.jsonl and pseudo-mask store

A part that is not given is shown as "not available" with the reason the run facts give
(--ground-truth no: the dataset has no ground truth; --upper-bound no; --val-split no;
--rounds 0), or as not produced by this run when they do not explain it.
"""

import logging
import re
from dataclasses import fields
from pathlib import Path

from ..core import cli_args as cli
from ..core.errors import InputError
from .readers import NOT_GIVEN, Part, ReportInputs

log = logging.getLogger(__name__)

# input name (a ReportInputs field) -> help
INPUTS = {f.name: f.metadata["help"] for f in fields(ReportInputs) if "help" in f.metadata}
# round_<kind>_<r> -> the ReportInputs field holding {r: Part}
ROUND_INPUT = re.compile(r"round_(eval|log|store)_(\d+)")
ROUND_FIELDS = {"eval": "round_evals", "log": "round_logs", "store": "round_stores"}

NO_GT = "the dataset has no ground truth"
GT_PARTS = ("pseudo_eval", "maskrcnn_train_eval", "maskrcnn_eval", "upper_bound_eval",
            "upper_bound_log", "round_eval", "gt_train", "gt_val", "peaks_quality",
            "proposals_quality")
VAL_PARTS = ("predictions_val", "maskrcnn_eval", "gt_val")


def _yes_no(text):
    value = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}.get(
        str(text).strip().lower())
    if value is None:
        raise ValueError(text)
    return value


_yes_no.__name__ = "yes/no"  # argparse's "invalid yes/no value" message


def add_actions(actions):
    doc = __doc__.format(inputs="\n".join(f"    {name}: {text}" for name, text in
                                          [("manifest", "dataset manifest.json")]
                                          + list(INPUTS.items())))
    p = cli.add_action(actions, "build", "self-contained HTML report of a run", doc, run_build)
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    p.add_argument("--input", nargs="+", action="extend", default=[], metavar="NAME=PATH",
                   help="an input of the report (repeatable; names above)")
    cli.add_config(p, "report", required=False)
    p.add_argument("--run-name", default="", help="name shown in the title")
    p.add_argument("--eval-split", default="val",
                   help="split the upper bound and self-training rounds were evaluated on")
    p.add_argument("--benchmarks", type=Path, help="folder of Snakemake benchmark .tsv files")
    p.add_argument("--shards", type=int,
                   help="the run's shard count: benchmark files of higher shards (left by an "
                        "earlier run with more shards) are not counted")
    p.add_argument("--ground-truth", type=_yes_no, metavar="yes|no",
                   help="whether the dataset has ground truth")
    p.add_argument("--upper-bound", type=_yes_no, metavar="yes|no",
                   help="the config's `upper_bound`")
    p.add_argument("--val-split", type=_yes_no, metavar="yes|no",
                   help="whether the dataset has a val split")
    p.add_argument("--rounds", type=int, help="the config's self_training.rounds")


def missing_reasons(ground_truth=None, upper_bound=None, val_split=None, rounds=None):
    """Input name (or `round_eval` for all rounds) -> why the run does not make it, from the
    run facts (None: not known)."""
    why = {}
    if ground_truth is False:
        why.update(dict.fromkeys(GT_PARTS, NO_GT))
    elif upper_bound is False:
        why["upper_bound_eval"] = why["upper_bound_log"] = "upper_bound is false in the config"
    if val_split is False:
        for name in VAL_PARTS:
            why.setdefault(name, "the dataset has no val split")
    if rounds == 0:
        why["round_eval"] = "self_training.rounds is 0 in the config"
    return why


def parse_inputs(items):
    """NAME=PATH pairs -> {name: Path}; an unknown or repeated name is an InputError."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise InputError("--input", f"expected NAME=PATH, got {item!r}")
        if name != "manifest" and name not in INPUTS and not ROUND_INPUT.fullmatch(name):
            raise InputError("--input", f"unknown input {name!r}; known: manifest, "
                                        f"{', '.join(INPUTS)}, round_<eval|log|store>_<r>")
        if name in named:
            raise InputError("--input", f"{name} is given twice")
        named[name] = Path(path)
    if "manifest" not in named:
        raise InputError("--input", "manifest=PATH is required")
    return named


def inputs_from_args(args):
    """The ReportInputs of the command line: the named inputs, and for every part that is not
    given the reason the run facts give."""
    named = parse_inputs(args.input)
    why = missing_reasons(args.ground_truth, args.upper_bound, args.val_split, args.rounds)
    inputs = ReportInputs(manifest=named.pop("manifest"), run_name=args.run_name,
                          eval_split=args.eval_split, shards=args.shards, rounds=args.rounds,
                          upper_bound=(None if args.upper_bound is None
                                       else bool(args.upper_bound and args.ground_truth
                                                 is not False)),
                          val_split=args.val_split)
    if args.benchmarks is not None:
        inputs.benchmarks = Part(args.benchmarks)
    for name in INPUTS:
        setattr(inputs, name, Part(named.get(name), why.get(name, NOT_GIVEN)))
    for name, path in named.items():
        m = ROUND_INPUT.fullmatch(name)
        if m:
            getattr(inputs, ROUND_FIELDS[m.group(1)])[int(m.group(2))] = Part(path)
    # the rounds the run makes: a part not given says so
    for r in range(1, (args.rounds or 0) + 1):
        for kind, field in ROUND_FIELDS.items():
            if kind != "eval" or "round_eval" not in why:
                getattr(inputs, field).setdefault(r, Part(None, NOT_GIVEN))
    inputs.rounds_reason = why.get("round_eval", inputs.rounds_reason)
    return inputs


def run_build(args):
    from ..core.atomic import write_text
    from ..core.config import stage_options
    from .page import build_report

    inputs = inputs_from_args(args)
    options = stage_options(args.config, "report", "build", args.runtime)
    text = build_report(inputs, options)
    write_text(args.out, text)
    log.info("wrote %s (%.0f kB)", args.out, len(text) / 1024)
