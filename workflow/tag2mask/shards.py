"""Cutting an image list into shards: contiguous, balanced, deterministic."""


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
