"""Relation seeds (`tag2mask irnet relations`): confident foreground and background cells of
the CAMs, the source of IRNet's inter-pixel relation labels, in a store of kind
"relation_seeds" (docs/formats.md).

Per image of the cams store: the seed map (tag2mask.irnet.relations.seed_map: class c + 1
where the largest normalised CAM is c's and reaches fg_threshold, 0 where every CAM is below
bg_threshold, IGNORE between), and as attrs the number of labelled pairs within
relation_radius (background, same-class foreground, different labels). The relation labels
themselves are a function of the seed map and the radius (relation_labels); IRNet's training
computes them per batch from the (possibly flipped) seed map, so the store keeps the map.

IRNet sharpens the CAMs with a dense CRF on the image before thresholding them. Here, with
`seed_superpixels` (a Felzenszwalb scale; null: off), each CAM is averaged within the
superpixels of the image (`superpixel_pooled`) and normalised to max 1 again, a cheap stand-in
that snaps the seeds to the image's edges (on the demo's train images it raised the
foreground seeds' cell precision from 0.51 to 0.70 and their recall from 0.56 to 0.70:
docs/results.md).
"""

import logging
from collections import Counter

import numpy as np
from skimage.segmentation import felzenszwalb
from tqdm import tqdm

from ..core.config import digest
from ..core.errors import InputError
from ..core.options import action_options
from ..core.store import StoreReader, StoreWriter
from ..dataset.images import load_rgb
from ..dataset.manifest import read_manifest
from .class_maps import KIND as CAMS_KIND
from .relations import BG_POS, FG_POS, IGNORE, NEG, relation_labels, seed_map

log = logging.getLogger(__name__)

KIND = "relation_seeds"


def grid_pixels(n_grid, grid_stride, input_size, image_size):
    """Image pixel (nearest) of each grid cell along one axis: cell i lies at input pixel
    grid_stride * i of the input_size input, which spans image_size pixels."""
    p = (np.arange(n_grid) * grid_stride + 0.5) * image_size / input_size - 0.5
    return np.clip(np.round(p).astype(np.int64), 0, image_size - 1)


def superpixel_pooled(cams, rgb, input_size, grid_stride, scale):
    """CAMs [K, G, G] averaged within the Felzenszwalb superpixels (scale `scale`) of the image
    rgb [H, W, 3] (each grid cell takes its image pixel's superpixel), each divided by its
    maximum again."""
    cams = np.asarray(cams, np.float32)
    if len(cams) == 0:
        return cams
    labels = felzenszwalb(rgb, scale=scale, sigma=0.8, min_size=20)
    n = cams.shape[-1]
    rows = grid_pixels(cams.shape[-2], grid_stride, input_size, rgb.shape[0])
    cols = grid_pixels(n, grid_stride, input_size, rgb.shape[1])
    cell_sp = labels[np.ix_(rows, cols)].ravel()
    size = np.bincount(cell_sp)
    pooled = np.stack([(np.bincount(cell_sp, c.ravel(), len(size)) / np.maximum(size, 1))
                       [cell_sp].reshape(c.shape) for c in cams])
    top = pooled.reshape(len(pooled), -1).max(1)
    return (pooled / np.maximum(top, 1e-12)[:, None, None]).astype(np.float32)


def write_seeds(cams_path, manifest_path, options, out_path, progress=True):
    """The relation-seeds store of every image of the cams store; returns the counts. The
    manifest gives the images' files (for the superpixels)."""
    counts = Counter()
    records = {r.id: r for r in read_manifest(manifest_path).images}
    with StoreReader(cams_path, CAMS_KIND) as cams_store:
        chosen = action_options(options, "irnet", "relations")
        config_digest = digest({"seeds": chosen, "cams": cams_store.attrs["config_digest"]})
        attrs = {k: cams_store.attrs[k] for k in ("input_size", "grid_stride")}
        attrs.update(fg_threshold=options["fg_threshold"],
                     bg_threshold=options["bg_threshold"],
                     relation_radius=options["relation_radius"],
                     seed_superpixels=options["seed_superpixels"] or 0)
        with StoreWriter(out_path, KIND, cams_store.class_names, config_digest,
                         attrs=attrs) as out:
            for image_id in tqdm(cams_store.image_ids, desc="relation seeds", mininterval=5,
                                 disable=not progress):
                e = cams_store.read(image_id, ["classes", "cams"])
                cams = e["cams"]
                if options["seed_superpixels"]:
                    if image_id not in records:
                        raise InputError(manifest_path, f"image {image_id!r} of {cams_path} "
                                                        "is not in the manifest")
                    cams = superpixel_pooled(cams, load_rgb(records[image_id].path),
                                             attrs["input_size"], attrs["grid_stride"],
                                             options["seed_superpixels"])
                seeds = seed_map(cams, e["classes"], options["fg_threshold"],
                                 options["bg_threshold"])
                labels = relation_labels(seeds, options["relation_radius"])
                per_image = {"fg_cells": int(((seeds > 0) & (seeds != IGNORE)).sum()),
                             "bg_cells": int((seeds == 0).sum()),
                             "pairs_bg": int((labels == BG_POS).sum()),
                             "pairs_fg": int((labels == FG_POS).sum()),
                             "pairs_neg": int((labels == NEG).sum())}
                out.add(image_id, e["height"], e["width"], {"seeds": seeds.astype(np.uint8)},
                        per_image)
                counts.update(per_image)
                counts["images"] += 1
            for k, v in counts.items():
                out.file.attrs[f"count_{k}"] = int(v)
    cells = max(1, counts["fg_cells"] + counts["bg_cells"])
    log.info("%d images: foreground %.0f%% / background %.0f%% of the known cells; pairs: "
             "%d background, %d foreground, %d different", counts["images"],
             100 * counts["fg_cells"] / cells, 100 * counts["bg_cells"] / cells,
             counts["pairs_bg"], counts["pairs_fg"], counts["pairs_neg"])
    return counts
