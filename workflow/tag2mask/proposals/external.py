"""External mask proposals from a COCO-RLE JSON file (e.g. MCG, SharpMask, SAM exports).

    tag2mask import-proposals --manifest M --json J --out X.h5 [--config C]

File layout:

    {"<image>": [{"segmentation": {"size": [H, W], "counts": "<compressed RLE>"}, "score": 0.9},
                 ...], ...}

<image> is a manifest image id or an image file name (the path's last part, or the manifest
path itself). `counts` may also be an uncompressed list of run lengths. Proposals are ranked
by score (highest first, stable), the best `max_proposals` are kept. Every problem raises
InputError naming the file and the problem: malformed JSON, an image the manifest does not
have, a mask whose size is not the image's, a malformed RLE or score.
"""

import logging
import math
from pathlib import Path

import numpy as np

from ..core.atomic import read_json
from ..core.errors import InputError
from ..core.masks import checked_counts

log = logging.getLogger(__name__)


def read_external(path):
    """Parse the JSON file: {image key: list of proposal dicts}."""
    path = Path(path)
    data = read_json(path, "external proposals file")
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object {image: [{segmentation, score}, ...]}")
    for key, items in data.items():
        if not isinstance(items, list):
            raise InputError(path, f"image {key!r}: expected a list of proposals")
    return data


def match_images(data, records, path):
    """Map each JSON key to a manifest record (by id, file name or path); unknown keys are
    errors, as is a key matching two records."""
    by_key = {}
    for r in records:
        for k in {r.id, Path(r.path).name, str(r.path)}:
            by_key.setdefault(k, []).append(r)
    out = {}
    for key in data:
        found = {r.id: r for r in by_key.get(key, [])}
        if not found:
            raise InputError(path, f"unknown image {key!r} (not a manifest image id or file "
                                   f"name)")
        if len(found) > 1:
            raise InputError(path, f"image {key!r} matches several manifest images "
                                   f"{sorted(found)}; use image ids")
        (record,) = found.values()
        if record.id in out:
            raise InputError(path, f"image {record.id!r} is given twice (as "
                                   f"{out[record.id][0]!r} and {key!r})")
        out[record.id] = (key, record)
    return out


def image_proposals(items, record, path, key, max_proposals):
    """Validated (counts strings, float32 scores) of one image, best first, capped."""
    masks, scores = [], []
    for i, item in enumerate(items):
        where = f"{path}: image {key!r} proposal {i}"
        if not isinstance(item, dict) or "segmentation" not in item:
            raise InputError(where, "expected {segmentation, score}")
        score = item.get("score")
        if (not isinstance(score, (int, float)) or isinstance(score, bool)
                or not math.isfinite(score)):
            raise InputError(where, f"score must be a finite number, found {score!r}")
        masks.append(checked_counts(item["segmentation"], record.height, record.width, where))
        scores.append(float(score))
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:max_proposals]
    return [masks[i] for i in order], np.asarray(scores, np.float32)[order]


def import_external(path, records, wanted, max_proposals):
    """{image id: (masks, scores)} for the `wanted` image ids. Every key of the file must
    name one of `records` (all manifest images); wanted images the file does not list are
    logged and get no proposals."""
    data = read_external(path)
    matched = match_images(data, records, path)
    out = {}
    for image_id in wanted:
        if image_id in matched:
            key, record = matched[image_id]
            out[image_id] = image_proposals(data[key], record, path, key, max_proposals)
    missing = [i for i in wanted if i not in out]
    if missing:
        log.warning("%s: %d image(s) have no proposals in the file, e.g. %s", path,
                    len(missing), missing[:3])
    return out


def write_imported(records, all_records, options, json_path, writer):
    """Import `json_path` for `records` into an open proposals StoreWriter."""
    if json_path is None:
        raise InputError("proposals.external.json", "method external needs a file path")
    imported = import_external(json_path, all_records, [r.id for r in records],
                               options["max_proposals"])
    for r in records:
        counts, scores = imported.get(r.id, ([], np.zeros(0, np.float32)))
        writer.add(r.id, r.height, r.width, {"masks": counts, "scores": scores},
                   attrs={"num_proposals": len(counts)})
    log.info("imported proposals of %d/%d images from %s", len(imported), len(records),
             json_path)
