"""Class activation maps of the trained classifier on the training images, for IRNet
(`tag2mask irnet cams`), written to a store of kind "cams" (docs/formats.md).

Per image, for its tagged classes only (the train split's tags; never ground truth): the
classifier's maps averaged over `cam_scales` x (image, mirror) with each pass clamped at 0
(tag2mask.classifier.cams.multiscale_class_maps), on the stride-`feature_stride` grid of the
input_size x input_size input (the grid IRNet predicts on), then each class divided by its
maximum (IRNet's normalisation), so foreground and background thresholds apply to every class
alike.
"""

import logging

import numpy as np
import torch
from tqdm import tqdm

from ..classifier.cams import grid_size, multiscale_class_maps
from ..core.config import digest
from ..core.errors import InputError
from ..core.options import action_options
from ..core.store import StoreWriter
from ..dataset.images import load_rgb

log = logging.getLogger(__name__)

KIND = "cams"


def normalised_cams(model, rgb, tags, input_size, options, device):
    """(float32 [K, G, G] maps of the tagged classes, each with max 1 (or all 0), float32 [K]
    their maxima before normalising)."""
    tags = sorted(tags)
    if not tags:
        grid = grid_size(input_size, options["feature_stride"])
        return np.zeros((0, grid, grid), np.float32), np.zeros(0, np.float32)
    maps = multiscale_class_maps(model, rgb, input_size, options["cam_scales"],
                                 options["cam_flip"], device, options["feature_stride"],
                                 positive=True, classes=tags)
    peak = maps.flatten(1).amax(1)
    maps = torch.where(peak.view(-1, 1, 1) > 0, maps / peak.clamp(min=1e-12).view(-1, 1, 1),
                       torch.zeros_like(maps))
    return maps.numpy().astype(np.float32), peak.numpy().astype(np.float32)


@torch.no_grad()
def write_cams(records, manifest, model, options, input_size, out_path, device, progress=True,
               root_attrs=None):
    """The cams store of `records` (train images with tags). Returns the number of images."""
    chosen = action_options(options, "irnet", "cams")
    attrs = {"input_size": input_size, "grid_stride": options["feature_stride"],
             "scales": list(map(float, options["cam_scales"])), "flip": options["cam_flip"],
             **(root_attrs or {})}
    with StoreWriter(out_path, KIND, manifest.classes, config_digest=digest(chosen),
                     attrs=attrs) as w:
        for rec in tqdm(records, desc="cams", unit="image", mininterval=5,
                        disable=not progress):
            rgb = load_rgb(rec.path)
            if rgb.shape[:2] != (rec.height, rec.width):
                raise InputError(rec.path, f"image is {rgb.shape[1]}x{rgb.shape[0]}, the "
                                           f"manifest says {rec.width}x{rec.height}")
            tags = manifest.label_indices(rec)
            cams, peak = normalised_cams(model, rgb, tags, input_size, options, device)
            w.add(rec.id, rec.height, rec.width,
                  {"classes": np.asarray(sorted(tags), np.int16),
                   "cams": cams.astype(np.float16), "cam_max": peak})
        w.file.attrs["count_images"] = len(records)
    log.info("%d images: CAMs at scales %s%s on a %d px input, grid stride %d", len(records),
             options["cam_scales"], " with flips" if options["cam_flip"] else "", input_size,
             options["feature_stride"])
    return len(records)
