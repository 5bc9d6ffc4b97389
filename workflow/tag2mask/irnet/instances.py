"""Instance pseudo masks from IRNet (pseudo-mask method `irnet`: tag2mask.irnet.method), written
as a pseudo-mask store (kind "pseudo_masks": docs/formats.md).

Per training image, on the stride-`feature_stride` grid of the input_size x input_size input:
  1. boundary map B and displacement field D of the trained IRNet, each averaged over the image
     and its mirror (the mirror's dx negated);
  2. centroids (`find_centroids`): every cell follows D (bilinear) for `centroid_iterations`
     steps; cells where |D| < centroid_threshold and some path ends form the centroid regions
     (4-connected components), and a cell belongs to the region its path ends in
     (`cluster_cells`). IRNet's regions take every cell with a short displacement; the cells
     that paths only pass through would then join an object's centre to the background's
     short-displacement area (on the demo: mAP@0.5 0.435 instead of 0.469 on 40 images);
  3. instance seeds: each tagged class's normalised CAM (the cams store; averaged within
     superpixels as for the relation seeds, with seed_superpixels) restricted to the cells of
     each region, one seed map per (region, class) with any CAM mass;
  4. the random walk (tag2mask.irnet.random_walk, sparse) spreads the seeds, times 1 - B, over
     affinities (1 - max B on the line)^beta within walk_radius, for walk_steps steps;
  5. the walked maps are divided by their overall maximum and resampled to the image; a pixel
     takes the (region, class) with the highest value, or background where none reaches
     bg_score; a (region, class)'s pixels are one instance, its largest 4-connected piece (with
     keep_fragments every piece is an instance, as IRNet's detect_instance), scored by the
     walked map's maximum in it; instances scoring below score_threshold are dropped.
peak_index is -1 (IRNet's instances come from centroids, not peaks); peak_yx is the instance's
centroid (the mean cell of its centroid region) in image pixels. Per-image attrs: num_regions,
num_seeds (seed maps walked), irnet_status ("ok" or "no_instance"); root attrs: method "irnet",
count_images_with_masks, count_images_without_masks, count_instances.
"""

import logging
from collections import Counter

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as connected
from tqdm import tqdm

from ..classifier.cams import resized_input
from ..core import masks as mask_rle
from ..core.config import digest
from ..core.errors import InputError
from ..core.options import action_options
from ..core.shards import shard_items
from ..core.store import StoreReader, StoreWriter
from ..dataset.images import load_rgb
from ..dataset.manifest import read_manifest
from ..peaks.grid import input_to_image, resample
from .class_maps import KIND as CAMS_KIND
from .random_walk import random_walk
from .seeds import superpixel_pooled

log = logging.getLogger(__name__)

KIND = "pseudo_masks"


def find_centroids(displacement, iterations=100):
    """float [2, H, W]: where each cell's path ends when it follows the displacement field
    [2, H, W] (dy, dx in cells; bilinear between cells) `iterations` times, kept on the grid."""
    d = np.asarray(displacement, np.float64)
    h, w = d.shape[1:]
    pos = np.mgrid[0:h, 0:w].astype(np.float64)
    top = np.array([h - 1, w - 1], np.float64).reshape(2, 1, 1)
    for _ in range(iterations):
        step = np.stack([ndimage.map_coordinates(d[i], pos, order=1, mode="nearest")
                         for i in range(2)])
        pos = np.clip(pos + step, 0, top)
    return pos


def cluster_cells(centroids, displacement, threshold):
    """(int [H, W] region of each cell's path end (1..K, 0: none), int [H, W] centroid
    regions: 4-connected components of the cells with |displacement| < threshold in which
    some path ends)."""
    strength = np.hypot(*np.asarray(displacement, np.float64))
    ends = np.round(centroids).astype(np.int64)
    hit = np.zeros(strength.shape, bool)
    hit[ends[0], ends[1]] = True
    regions, _ = ndimage.label((strength < threshold) & hit)
    return regions[ends[0], ends[1]], regions


@torch.no_grad()
def boundary_and_displacement(model, rgb, input_size, device):
    """(boundary float32 [G, G] in [0, 1], displacement float32 [2, G, G]) of one image,
    averaged over the image and its mirror."""
    x = resized_input(rgb, input_size, device)
    logits, disp = model(torch.cat([x, x.flip(-1)]))
    boundary = torch.sigmoid((logits[0, 0] + logits[1, 0].flip(-1)) / 2)
    mirrored = disp[1].flip(-1) * torch.tensor([1.0, -1.0], device=disp.device).view(2, 1, 1)
    return boundary.cpu().numpy(), ((disp[0] + mirrored) / 2).cpu().numpy()


def instance_seeds(cams, classes, clusters):
    """(seed maps float32 [S, G, G], their classes [S], their regions [S]): each class's CAM
    on each region's cells, for the (region, class) pairs with any CAM mass."""
    maps, labels, regions = [], [], []
    for k in range(1, int(clusters.max(initial=0)) + 1):
        inside = clusters == k
        for c, cam in zip(classes, cams):
            seed = np.where(inside, cam, 0).astype(np.float32)
            if seed.max() > 0:
                maps.append(seed)
                labels.append(int(c))
                regions.append(k)
    grid = clusters.shape
    return (np.stack(maps) if maps else np.zeros((0, *grid), np.float32),
            np.asarray(labels, np.int64), np.asarray(regions, np.int64))


def detect_instances(walked, labels, options):
    """[(mask bool [H, W], class, score, seed index)] from walked maps [S, H, W] (already
    divided by their maximum): per pixel the best seed map, background below bg_score; a seed
    map's pixels make one instance (its largest 4-connected piece; every piece with
    keep_fragments), scored by the map's maximum in it."""
    if len(walked) == 0:
        return []
    best = walked.argmax(0)
    best = np.where(walked.max(0) >= options["bg_score"], best, -1)
    found = []
    for s in np.unique(best[best >= 0]):
        components = connected(best == s, connectivity=1)
        if not options["keep_fragments"] and components.max() > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            components = (components == sizes.argmax()).astype(np.int64)
        for i in range(1, components.max() + 1):
            mask = components == i
            score = float(walked[s][mask].max())
            if score >= options["score_threshold"]:
                found.append((mask, int(labels[s]), score, int(s)))
    found.sort(key=lambda f: -f[2])
    return found


def image_instances(model, rgb, cams_entry, input_size, feature_stride, options, device):
    """The pseudo-mask store arrays and per-image attrs of one image."""
    height, width = rgb.shape[:2]
    boundary, displacement = boundary_and_displacement(model, rgb, input_size, device)
    clusters, regions = cluster_cells(find_centroids(displacement,
                                                     options["centroid_iterations"]),
                                      displacement, options["centroid_threshold"])
    cams = np.asarray(cams_entry["cams"], np.float32)
    if options["seed_superpixels"]:  # the CAMs the relation seeds were made from
        cams = superpixel_pooled(cams, rgb, input_size, feature_stride,
                                 options["seed_superpixels"])
    if cams.shape[-2:] != boundary.shape:
        raise InputError("cams store", f"image {cams_entry['image_id']!r}: CAMs are "
                         f"{cams.shape[-2:]}, IRNet's grid is {boundary.shape}")
    seeds, labels, seed_region = instance_seeds(cams, cams_entry["classes"], clusters)
    walked = random_walk(seeds, boundary, options["walk_radius"], options["beta"],
                         options["walk_steps"])
    top = walked.max() if walked.size else 0.0
    if top > 0:
        walked = walked / top
    walked = resample(torch.from_numpy(walked)[None], feature_stride, (input_size, input_size),
                      (height, width))[0].numpy() if len(walked) else walked
    found = detect_instances(walked, labels, options)
    masks = np.stack([f[0] for f in found]) if found else np.zeros((0, height, width), bool)
    counts = mask_rle.encode(masks)
    # each instance's centroid: the mean cell of its region, in image pixels
    yx = np.zeros((len(found), 2), np.float32)
    for i, f in enumerate(found):
        cells = np.argwhere(regions == seed_region[f[3]]).mean(0) * feature_stride
        yx[i] = input_to_image(cells, (input_size, input_size), (height, width))
    arrays = {"masks": counts, "labels": np.asarray([f[1] for f in found], np.int16),
              "scores": np.asarray([f[2] for f in found], np.float32),
              "boxes": mask_rle.boxes(counts, height, width),
              "peak_index": np.full(len(found), -1, np.int32), "peak_yx": yx}
    attrs = {"num_regions": int(regions.max(initial=0)), "num_seeds": len(seeds),
             "irnet_status": "ok" if found else "no_instance"}
    return arrays, attrs


def write_instances(model, meta, cams_path, manifest_path, options, shard, num_shards,
                    out_path, device, progress=True):
    """One shard of the pseudo-mask store: the manifest's images that the cams store holds
    (manifest order), cut into num_shards. Returns the counts."""
    manifest = read_manifest(manifest_path)
    counts = Counter()
    with StoreReader(cams_path, CAMS_KIND) as cams_store:
        if cams_store.class_names != manifest.classes:
            raise InputError(cams_path, f"class names {cams_store.class_names} differ from the "
                                        f"manifest's {manifest.classes}")
        input_size = int(cams_store.attrs["input_size"])
        stride = int(cams_store.attrs["grid_stride"])
        if (input_size, stride) != (meta["input_size"], meta["feature_stride"]):
            raise InputError(cams_path, f"CAMs on a {input_size} px input at stride {stride}, "
                             f"IRNet works on {meta['input_size']} px at stride "
                             f"{meta['feature_stride']}")
        records = shard_items([r for r in manifest.images if r.id in cams_store], num_shards,
                              shard)
        chosen = action_options(options, "irnet", "make")
        config_digest = digest({"instances": chosen, "irnet": meta["config"],
                                "cams": cams_store.attrs["config_digest"]})
        root = {"method": "irnet", "shard": f"{shard}/{num_shards}"}
        with StoreWriter(out_path, KIND, manifest.classes, config_digest, attrs=root) as out:
            for rec in tqdm(records, desc=f"irnet instances shard {shard}", mininterval=10,
                            disable=not progress):
                rgb = load_rgb(rec.path)
                if rgb.shape[:2] != (rec.height, rec.width):
                    raise InputError(rec.path, f"image is {rgb.shape[1]}x{rgb.shape[0]}, the "
                                               f"manifest says {rec.width}x{rec.height}")
                entry = cams_store.read(rec.id, ["classes", "cams"])
                arrays, attrs = image_instances(model, rgb, entry, input_size, stride,
                                                options, device)
                out.add(rec.id, rec.height, rec.width, arrays, attrs)
                counts["images_with_masks" if len(arrays["labels"]) else
                       "images_without_masks"] += 1
                counts["instances"] += len(arrays["labels"])
            for name in ("images_with_masks", "images_without_masks", "instances"):
                out.file.attrs[f"count_{name}"] = int(counts[name])
    log.info("shard %d/%d: %d images, %s", shard, num_shards, len(records), dict(counts))
    return counts
