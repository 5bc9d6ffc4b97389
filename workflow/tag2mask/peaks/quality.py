"""How good are the class peaks? Figures from a peaks store against ground truth (evaluation only).

- classification mAP: the stored per-image class scores against the classes present in GT;
- peak precision: share of peaks that lie inside a GT instance of their class;
- instance recall: share of GT instances hit by at least one peak of their class;
- duplicate rate: share of GT instances hit by more than one peak of their class;
- the same three for the response-map argmax points (WISE's point per peak);
- the peak values of correct and wrong peaks (quantiles) and precision / recall / duplicates
  if the peak threshold were raised to each of a few values: how to choose peaks.peak_threshold;
- response maps ("response_maps"): do they tell a peak's instance from the others? Pairwise
  cosine similarity and overlap (sum of the pointwise minimum; 1 = the same map) of the maps of
  different peaks of one image, all pairs and the pairs whose peaks hit different instances;
  and, for each peak inside an instance of its class (its own instance), the share of its
  response mass inside the own instance, inside the image's other instances, the own share of
  the mass on instances (own / (own + others)) next to what the instances' areas alone would
  give, and how often the map's argmax lies in the own instance.

Crowd regions are not instances (a peak in one counts as wrong, as in COCO evaluation it
would be ignored; few datasets here have crowds).
"""

import json
import logging

import numpy as np

from ..core import masks as mask_rle
from ..core.errors import InputError
from ..core.metrics import average_precision
from ..core.store import StoreReader

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def read_gt(paths):
    """{image name: (height, width, [(class index, counts)])} from COCO GT files."""
    out = {}
    for path in paths:
        try:
            with open(path) as f:
                coco = json.load(f)
        except FileNotFoundError:
            raise InputError(path, "ground-truth file not found") from None
        except json.JSONDecodeError as e:
            raise InputError(path, f"not valid JSON ({e})") from None
        by_id = {}
        for im in coco["images"]:
            by_id[im["id"]] = im["name"]
            out[im["name"]] = (im["height"], im["width"], [])
        for a in coco["annotations"]:
            seg = a["segmentation"]
            if not isinstance(seg, dict):
                raise InputError(path, f"annotation {a['id']}: segmentation is not an RLE")
            out[by_id[a["image_id"]]][2].append(
                (a["category_id"] - 1, seg["counts"], bool(a.get("iscrowd", 0))))
    return out


def match_points(points, point_class, instance_masks, instance_class):
    """(point correct [P] bool, hits per instance [N] int): a point is correct when it lies
    inside an instance of its class; every such instance counts it as a hit."""
    n, p = len(instance_class), len(point_class)
    if n == 0 or p == 0:
        return np.zeros(p, bool), np.zeros(n, int)
    h, w = instance_masks.shape[1:]
    yx = np.clip(np.round(np.asarray(points, np.float64)).astype(int), 0, [h - 1, w - 1])
    inside = instance_masks[:, yx[:, 0], yx[:, 1]]  # [N, P]
    inside &= np.asarray(instance_class)[:, None] == np.asarray(point_class)[None, :]
    return inside.any(0), inside.sum(1)


def _rates(correct, hits):
    hits = np.asarray(hits)
    return {
        "precision": float(np.mean(correct)) if len(correct) else None,
        "instance_recall": float(np.mean(hits >= 1)) if len(hits) else None,
        "duplicate_rate": float(np.mean(hits > 1)) if len(hits) else None,
    }


def pairwise_similarity(maps):
    """(cosine [P, P], overlap [P, P]) of non-negative maps [P, h, w]; overlap is the sum of
    the pointwise minimum of the two maps, each normalised to sum 1 (1: the same map, 0:
    disjoint supports). All-zero maps give 0."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    norm = np.linalg.norm(flat, axis=1)
    unit = flat / np.where(norm > 0, norm, 1)[:, None]
    cosine = unit @ unit.T
    total = flat.sum(1)
    dist = flat / np.where(total > 0, total, 1)[:, None]
    overlap = np.minimum(dist[:, None, :], dist[None, :, :]).sum(-1)
    return cosine, overlap


def masks_on_grid(masks, grid_hw):
    """Boolean masks [N, H, W] sampled at the pixel centres of an (h, w) map grid -> [N, h, w]
    (map pixel i covers image rows [i H / h, (i + 1) H / h); its centre decides)."""
    height, width = masks.shape[1:]
    rows = np.minimum(((np.arange(grid_hw[0]) + 0.5) * height / grid_hw[0]).astype(int),
                      height - 1)
    cols = np.minimum(((np.arange(grid_hw[1]) + 0.5) * width / grid_hw[1]).astype(int),
                      width - 1)
    return masks[:, rows][:, :, cols]


def own_instances(points, point_class, instance_masks, instance_class):
    """Per point the index of its own instance (the smallest instance of its class that
    contains it), -1 when it lies in none."""
    own = np.full(len(point_class), -1, int)
    if len(instance_class) == 0 or len(point_class) == 0:
        return own
    h, w = instance_masks.shape[1:]
    yx = np.clip(np.round(np.asarray(points, np.float64)).astype(int), 0, [h - 1, w - 1])
    inside = instance_masks[:, yx[:, 0], yx[:, 1]]  # [N, P]
    inside &= np.asarray(instance_class)[:, None] == np.asarray(point_class)[None, :]
    area = instance_masks.reshape(len(instance_masks), -1).sum(1).astype(float)
    cost = np.where(inside, area[:, None], np.inf)
    hit = inside.any(0)
    own[hit] = cost[:, hit].argmin(0)
    return own


def response_localisation(maps, own, instance_masks, argmax_yx=None):
    """How much of each peak's response lies on its own instance (evaluation only).

    maps: response maps [P, h, w] (each sums to 1); own: own instance per peak ([P], -1 for
    none, from `own_instances`); instance_masks: [N, H, W] at image resolution; argmax_yx:
    the maps' argmax points in image pixels [P, 2] (optional). Returns, for the peaks with an
    own instance, arrays of: mass_own, mass_other (on the image's other instances), own_share
    (own / (own + other), nan without mass on instances), area_share (the own instance's
    share of all instance area: own_share's value for a map spread uniformly) and
    argmax_in_own (bool; only with argmax_yx).
    """
    has = own >= 0
    if not has.any():
        empty = {k: np.zeros(0) for k in ("mass_own", "mass_other", "own_share", "area_share")}
        return {**empty, "argmax_in_own": np.zeros(0, bool)} if argmax_yx is not None else empty
    n = len(instance_masks)
    grid = masks_on_grid(instance_masks, maps.shape[-2:]).reshape(n, -1).astype(np.float64)
    mass = np.asarray(maps, np.float64).reshape(len(maps), -1)[has] @ grid.T  # [P', N]
    total = mass.sum(1)
    mine = own[has]
    mass_own = mass[np.arange(len(mine)), mine]
    # instances may overlap (occlusion is rare): the other mass is at least 0
    mass_other = np.maximum(total - mass_own, 0)
    area = instance_masks.reshape(n, -1).sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        own_share = np.where(total > 0, mass_own / (mass_own + mass_other), np.nan)
    out = {"mass_own": mass_own, "mass_other": mass_other, "own_share": own_share,
           "area_share": area[mine] / area.sum()}
    if argmax_yx is not None:
        h, w = instance_masks.shape[1:]
        yx = np.clip(np.round(np.asarray(argmax_yx, np.float64)[has]).astype(int), 0,
                     [h - 1, w - 1])
        out["argmax_in_own"] = instance_masks[mine, yx[:, 0], yx[:, 1]]
    return out


def _mean(values):
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def response_map_parts(maps, own, localisation):
    """What response_map_quality keeps of one image: its pairs' cosine and overlap (all, and
    of peaks in different instances) and its localisation figures, not its maps."""
    if len(maps) < 2:
        return None, localisation
    cosine, overlap = pairwise_similarity(maps)
    i, j = np.triu_indices(len(maps), 1)
    diff = (own[i] >= 0) & (own[j] >= 0) & (own[i] != own[j])
    return (cosine[i, j], overlap[i, j], cosine[i, j][diff], overlap[i, j][diff]), localisation


def response_map_quality(per_image, parts=None):
    """The "response_maps" figures from per-image (maps, own) pairs and localisation dicts,
    or from their `response_map_parts` (`parts`: what peak_quality keeps, image by image, so
    that its memory does not hold every image's maps)."""
    if parts is None:
        parts = [response_map_parts(*x) for x in per_image]
    cos_all, ovl_all, cos_diff, ovl_diff = [], [], [], []
    loc = {}
    for pairs, localisation in parts:
        if pairs is not None:
            for out, v in zip((cos_all, ovl_all, cos_diff, ovl_diff), pairs):
                out.append(v)
        for k, v in localisation.items():
            loc.setdefault(k, []).append(v)
    loc = {k: np.concatenate(v) for k, v in loc.items()}
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))
    cos_all, ovl_all, cos_diff, ovl_diff = map(cat, (cos_all, ovl_all, cos_diff, ovl_diff))
    n_own = len(loc.get("mass_own", ()))
    several = ~np.isnan(loc["own_share"]) & (loc["area_share"] < 1) if n_own else np.zeros(0, bool)
    return {
        "pairs": len(cos_all),
        "pair_cosine": _mean(cos_all),
        "pair_overlap": _mean(ovl_all),
        "pairs_different_instances": len(cos_diff),
        "different_instances_cosine": _mean(cos_diff),
        "different_instances_overlap": _mean(ovl_diff),
        "peaks_in_own_instance": n_own,
        "mass_own": _mean(loc["mass_own"]) if n_own else None,
        "mass_other": _mean(loc["mass_other"]) if n_own else None,
        # only peaks of images with several instances: with one instance both are 1
        "peaks_with_other_instances": int(several.sum()),
        "own_share": _mean(loc["own_share"][several]) if n_own else None,
        "own_share_by_area": _mean(loc["area_share"][several]) if n_own else None,
        "argmax_in_own": _mean(loc["argmax_in_own"]) if n_own and "argmax_in_own" in loc
        else None,
    }


def peak_quality(store_path, gt_paths, thresholds=None):
    """The quality dict (see the module doc) of a peaks store against COCO GT files."""
    gt = read_gt(gt_paths)
    rows = []  # per image: values, class, correct, argmax correct, per-instance peak info
    scores, targets = [], []
    instance_class_all, hits_all, argmax_hits_all = [], [], []
    values_all, class_all, correct_all, argmax_correct_all = [], [], [], []
    # per (image instance) the values of the peaks hitting it, for the threshold sweep
    hitting_values = []
    # per image: response_map_parts (pair similarities and localisation figures, not the maps)
    responses = []
    missing = 0
    with StoreReader(store_path, "peaks") as store:
        class_names = store.class_names
        attrs = store.attrs
        for image_id in store.image_ids:
            if image_id not in gt:
                missing += 1
                continue
            e = store.read(image_id, ["peak_class", "peak_yx", "peak_value", "class_scores",
                                      "response_argmax_yx", "response_maps"])
            height, width, anns = gt[image_id]
            if (e["height"], e["width"]) != (height, width):
                raise InputError(store_path, f"image {image_id}: size {e['height']}x{e['width']} "
                                             f"differs from the ground truth {height}x{width}")
            inst = [(c, counts) for c, counts, crowd in anns if not crowd]
            masks = mask_rle.decode([cnt for _, cnt in inst], height, width)
            icls = np.array([c for c, _ in inst], int)
            pcls = np.asarray(e["peak_class"], int)
            correct, hits = match_points(e["peak_yx"], pcls, masks, icls)
            a_correct, a_hits = match_points(e["response_argmax_yx"], pcls, masks, icls)
            own = own_instances(e["peak_yx"], pcls, masks, icls)
            responses.append(response_map_parts(e["response_maps"], own, response_localisation(
                e["response_maps"], own, masks, e["response_argmax_yx"])))
            vals = np.asarray(e["peak_value"], np.float32)
            values_all.append(vals)
            class_all.append(pcls)
            correct_all.append(correct)
            argmax_correct_all.append(a_correct)
            instance_class_all.append(icls)
            hits_all.append(hits)
            argmax_hits_all.append(a_hits)
            if len(icls) and len(pcls):
                yx = np.clip(np.round(e["peak_yx"]).astype(int), 0, [height - 1, width - 1])
                inside = masks[:, yx[:, 0], yx[:, 1]] & (icls[:, None] == pcls[None, :])
                hitting_values += [vals[row] for row in inside]
            else:
                hitting_values += [np.zeros(0, np.float32)] * len(icls)
            target = np.zeros(len(class_names))
            target[[c for c, _, _ in anns]] = 1
            targets.append(target)
            scores.append(np.asarray(e["class_scores"], np.float32))
            rows.append(len(pcls))
    if missing:
        log.warning("%d images of the peaks store have no ground truth (left out)", missing)
    if not rows:
        raise InputError(store_path, "no image of the peaks store has ground truth")

    values = np.concatenate(values_all)
    pclass = np.concatenate(class_all)
    correct = np.concatenate(correct_all)
    a_correct = np.concatenate(argmax_correct_all)
    icls = np.concatenate(instance_class_all)
    hits = np.concatenate(hits_all)
    a_hits = np.concatenate(argmax_hits_all)
    aps = average_precision(np.stack(scores), np.stack(targets))

    out = {
        "store": str(store_path),
        "config_digest": attrs.get("config_digest"),
        "peak_threshold": float(attrs["peak_threshold"]) if "peak_threshold" in attrs else None,
        "images": len(rows),
        "images_without_peaks": int(sum(n == 0 for n in rows)),
        "peaks": len(values),
        "peaks_per_image": float(len(values) / len(rows)),
        "gt_instances": len(icls),
        "classification_mAP": float(np.nanmean(aps)) if np.any(~np.isnan(aps)) else None,
        **{f"peak_{k}" if k == "precision" else k: v for k, v in _rates(correct, hits).items()},
        "argmax": _rates(a_correct, a_hits),
        "peak_value_quantiles": {
            name: ([float(q) for q in np.quantile(v, QUANTILES)] if len(v) else [])
            for name, v in (("correct", values[correct]), ("wrong", values[~correct]))},
        "quantile_levels": list(QUANTILES),
        "response_maps": response_map_quality(None, parts=responses),
        "per_class": {},
        "threshold_sweep": [],
    }
    for c, name in enumerate(class_names):
        mine, inst = pclass == c, icls == c
        out["per_class"][name] = {
            "AP": None if np.isnan(aps[c]) else float(aps[c]),
            "peaks": int(mine.sum()), "instances": int(inst.sum()),
            **_rates(correct[mine], hits[inst])}
    if thresholds is None:
        thresholds = sorted(set(np.round(np.quantile(values, QUANTILES), 3).tolist())) \
            if len(values) else []
    for t in thresholds:
        kept = values >= t
        inst_hits = np.array([int((v >= t).sum()) for v in hitting_values], int)
        out["threshold_sweep"].append({"threshold": float(t), "peaks": int(kept.sum()),
                                       **_rates(correct[kept], inst_hits)})
    return out
