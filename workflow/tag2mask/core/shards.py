"""Cutting an image list into shards: contiguous, balanced, deterministic."""

import logging

from .errors import InputError

log = logging.getLogger(__name__)


def shard_bounds(n_items, n_shards, shard):
    """[start, stop) of shard `shard` (0-based) when n_items are cut into n_shards parts."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} outside 0..{n_shards - 1}")
    base, extra = divmod(n_items, n_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def shard_items(items, n_shards, shard):
    start, stop = shard_bounds(len(items), n_shards, shard)
    return items[start:stop]


def select_shard(manifest, splits, shard, num_shards, config_key):
    """The manifest images of `splits` (manifest order) cut to one shard, and the index of the
    shard's first image in that selection. Splits the manifest lacks are logged, not errors
    (a dataset without val still runs a config that names val)."""
    unknown = [s for s in splits if s not in manifest.splits]
    if unknown:
        log.warning("%s %s: no such split in the manifest (it has %s)", config_key, unknown,
                    manifest.splits)
    if not 0 <= shard < num_shards:
        raise InputError("--shard", f"shard {shard} outside 0..{num_shards - 1}")
    records = [r for r in manifest.images if r.split in splits]
    start, stop = shard_bounds(len(records), num_shards, shard)
    return records[start:stop], start
