"""Writing a proposals store (kind "proposals", docs/formats.md) for a list of images: generated
by the built-in grouping (tag2mask.proposals.builtin) or imported from an external file
(tag2mask.proposals.external). Masks: RLE strings at image resolution, best first; scores:
float32 objectness. Per-image attrs: num_proposals and, for generated proposals, seconds and
cpu_seconds (wall-clock and CPU time of that image, without decoding the image file).
"""

import json
import logging
import time

import numpy as np
from tqdm import tqdm

from ..core.config import digest
from ..core.errors import InputError
from ..core.store import StoreWriter
from ..dataset.images import load_rgb
from .builtin import ProposalSettings, propose

log = logging.getLogger(__name__)


def store_writer(out, manifest, options, method, shard, num_shards):
    return StoreWriter(out, "proposals", manifest.classes, config_digest=digest(options),
                       attrs={"method": method, "options": json.dumps(options, sort_keys=True),
                              "shard": shard, "num_shards": num_shards})


def write_generated(records, options, writer):
    settings = ProposalSettings.from_options(options)
    seconds = []
    for r in tqdm(records, desc="proposals", unit="image", mininterval=5):
        rgb = load_rgb(r.path)
        if rgb.shape[:2] != (r.height, r.width):
            raise InputError(r.path, f"image is {rgb.shape[1]}x{rgb.shape[0]}, the manifest "
                                     f"says {r.width}x{r.height}")
        t, cpu = time.perf_counter(), time.process_time()
        props = propose(rgb, settings, r.id)
        counts = props.rle()
        dt = time.perf_counter() - t
        seconds.append(dt)
        writer.add(r.id, r.height, r.width, {"masks": counts, "scores": props.scores},
                   attrs={"num_proposals": len(counts), "seconds": dt,
                          "cpu_seconds": time.process_time() - cpu})
    if seconds:
        log.info("%d images, %.3f s per image", len(seconds), float(np.mean(seconds)))
