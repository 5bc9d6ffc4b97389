"""Command-line pieces every stage's `cli.py` shares: the arguments that mean the same thing in
every subcommand (config section, manifest, shard, threads, progress) and the `gather` action
of the sharded stages. A stage declares what it needs with these, never with its own copy."""

import argparse
import json
from pathlib import Path

from .errors import InputError


def add_action(actions, name, help, doc, func):
    """One action of a stage (`tag2mask <stage> <name>`), described by its module docstring."""
    p = actions.add_parser(name, help=help, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def add_config(p, section, required=True):
    """--config: a workflow config YAML (its `section` is used) or the section's keys the action
    reads as inline JSON (what the Snakemake rules pass, their rerun trigger); --runtime: the
    keys that say how to run (x-rerun: false in the schema), as inline JSON."""
    p.add_argument("--config", required=required, default=None if required else "{}",
                   help=f"a workflow config YAML (its {section} section is used), or that "
                        "section's keys as inline JSON")
    p.add_argument("--runtime", type=_json_object, default=None, metavar="JSON",
                   help="how to run (device, worker processes, ...: the section's keys the "
                        "schema marks x-rerun: false) as inline JSON; default: what the "
                        "workflow passes in its environment, else --config's")


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("not a JSON object")
    return value


def add_manifest(p, required=True):
    p.add_argument("--manifest", required=required, type=Path, help="dataset manifest.json")


def add_shard(p):
    """--shard / --num-shards: which part of the image list this job makes (core.shards)."""
    p.add_argument("--shard", type=int, default=0, help="0-based shard index (default 0)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (default 1)")


def add_threads(p, default=None):
    p.add_argument("--threads", type=int, default=default,
                   help="torch CPU threads (default: "
                        + ("torch's choice, one per core" if default is None else str(default))
                        + ")")


def add_training(p, section, outputs):
    """The arguments every training action shares: --manifest, --config and --runtime,
    --out-dir (for `outputs`), --threads, --processes (core.launch), --no-progress."""
    from .launch import add_processes

    add_manifest(p)
    add_config(p, section)
    p.add_argument("--out-dir", required=True, type=Path, help=f"folder for {outputs}")
    add_threads(p)
    add_processes(p, section)
    add_progress(p)


def add_progress(p):
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log files)")


def set_threads(threads):
    """Apply --threads (None: leave torch's default)."""
    if threads:
        import torch  # here: the stages without torch work stay light to import

        torch.set_num_threads(max(1, threads))


def add_gather(actions, kind):
    """Join the shard stores of a sharded stage into one store. Every shard must be a store of
    this stage's kind (`kind`: one kind, or a tuple for a stage with several sharded stores)
    with the same class names and config digest, and no image may appear in two shards
    (core.store.gather)."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    p = add_action(actions, "gather", f"join the {' or '.join(kinds)} shard stores into one "
                   "store", add_gather.__doc__, lambda args: _gather(args, kinds))
    p.add_argument("--out", required=True, type=Path, help="the joined store")
    p.add_argument("shards", nargs="+", type=Path, help="shard stores, in order")


def _gather(args, kinds):
    from .store import StoreReader, gather

    for path in args.shards:
        # checks format and version (writer_kind: the rule a damaged shard's error names)
        with StoreReader(path, writer_kind=kinds[0] if len(kinds) == 1 else None) as store:
            if store.kind not in kinds:
                raise InputError(path, f"expected a {' or '.join(map(repr, kinds))} store, "
                                       f"found {store.kind!r}")
    if len(set(map(str, args.shards))) != len(args.shards):
        raise InputError("shards", "a shard store is given twice")
    gather(args.shards, args.out)
