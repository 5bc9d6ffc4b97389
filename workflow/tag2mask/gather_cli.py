"""`tag2mask gather`: join the shard stores of a sharded stage into one store.

    tag2mask gather --kind proposals --out proposals.h5 shards/0.h5 shards/1.h5 ...

Every shard must be a store of that kind with the same class names and config digest, and
no image may appear in two shards (`tag2mask.store.gather`).
"""

from pathlib import Path

from .errors import InputError
from .store import StoreReader, gather


def add_command(sub):
    p = sub.add_parser("gather", help="join shard stores into one store", description=__doc__)
    p.add_argument("--kind", required=True, help="store kind: peaks, proposals, pseudo_masks")
    p.add_argument("--out", required=True, type=Path, help="the joined store")
    p.add_argument("shards", nargs="+", type=Path, help="shard stores, in order")
    p.set_defaults(func=run)


def run(args):
    for path in args.shards:
        with StoreReader(path, args.kind):  # checks format, version and kind
            pass
    if len(set(map(str, args.shards))) != len(args.shards):
        raise InputError("shards", "a shard store is given twice")
    gather(args.shards, args.out)
