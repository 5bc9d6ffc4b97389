"""Pseudo-mask method `retrieval` (tag2mask.core.methods; WISE, PRM): one mask proposal
per class peak, by the rule `retrieval.method` names (tag2mask.retrieval.select).

Reads the peaks store and the proposals store (never ground truth) and writes, per image, the
chosen proposals' full-resolution RLE masks with their class, confidence, box and the peak that
produced them (layout: docs/formats.md, kind "pseudo_masks"). Images with no peaks, or whose
peaks found no valid proposal, are written with N = 0; each image's attr `retrieval_status`
says which ("ok", "no_peaks", "no_proposal"), and root attrs count_* count them (summed by
gather).
"""

import logging
from collections import Counter

import numpy as np
from tqdm import tqdm

from ..core import masks as mask_rle
from ..core.config import digest
from ..core.errors import InputError
from ..core.panels import retrieval_panel
from ..core.shards import shard_items
from ..core.store import StoreReader, StoreWriter, image_key
from ..dataset.images import load_rgb
from ..dataset.manifest import read_manifest
from .select import select
from .working import prepare_image

log = logging.getLogger(__name__)

KIND = "pseudo_masks"
# status key -> root attr count_<name>
COUNTS = {"ok": "images_with_masks", "no_peaks": "images_without_peaks",
          "no_proposal": "images_without_proposal", "not_in_peaks_store": "images_not_in_peaks",
          "not_in_proposals_store": "images_not_in_proposals", "instances": "instances",
          "peaks": "peaks", "peaks_merged": "peaks_merged"}


def instance_arrays(selection, proposal_counts, inputs, n_peaks, height, width):
    """The store arrays of one image's kept instances (masks copied from the proposals).
    peak_index is -1 for an instance found from a grid point (method consensus); peak_yx is
    the candidate's point."""
    kept = selection.kept
    props = selection.proposal[kept]
    counts = [proposal_counts[i] for i in props]
    return {
        "masks": counts,
        "labels": np.asarray(inputs.point_class, np.int16)[kept],
        "scores": np.asarray(selection.confidence, np.float32),
        "boxes": mask_rle.boxes(counts, height, width),
        "peak_index": np.where(kept < n_peaks, kept, -1).astype(np.int32),
        "peak_yx": np.asarray(inputs.point_yx, np.float32).reshape(-1, 2)[kept],
        "proposal_index": props.astype(np.int32),
        "retrieval_score": selection.score[kept].astype(np.float32),
    }


def empty_arrays():
    return {"masks": [], "labels": np.zeros(0, np.int16), "scores": np.zeros(0, np.float32),
            "boxes": np.zeros((0, 4), np.float32), "peak_index": np.zeros(0, np.int32),
            "peak_yx": np.zeros((0, 2), np.float32), "proposal_index": np.zeros(0, np.int32),
            "retrieval_score": np.zeros(0, np.float32)}


def retrieve_image(peaks, proposals, height, width, options, where="image"):
    """Retrieval for one image: (store arrays, per-image attrs, (WorkingInputs, Selection) or
    None when the image has no peaks)."""
    n_peaks = len(peaks["peak_class"])
    if n_peaks == 0:
        return empty_arrays(), {"num_peaks": 0, "retrieval_status": "no_peaks"}, None
    inp = prepare_image(peaks, proposals["masks"], proposals["scores"], height, width, options,
                        where=where)
    sel = select(inp, options)
    arrays = instance_arrays(sel, proposals["masks"], inp, n_peaks, height, width)
    attrs = {
        "num_peaks": n_peaks,
        "num_points": len(inp.point_class),
        "num_candidates": len(inp.valid),
        "num_valid_candidates": int(inp.valid.sum()),
        "peaks_without_proposal": int((sel.proposal[:n_peaks] < 0).sum()),
        "peaks_merged": int((sel.merged_into[:n_peaks] >= 0).sum()),
        "retrieval_status": "ok" if len(sel.kept) else "no_proposal",
    }
    return arrays, attrs, (inp, sel)


def make_shard(inputs, manifest_path, options, shard, num_shards, out_path, panels=None,
               progress=True):
    """Retrieve pseudo masks for shard `shard` of the manifest's images from the stores
    `inputs["peaks"]` and `inputs["proposals"]`, drawing the first `retrieval.panel_images`
    images into the folder `panels` (if given); returns status counts.

    Images are the manifest's that both stores hold, in manifest order, cut into `num_shards`
    shards (cutting the whole manifest would leave the shards of splits the peaks did not cover
    idle). Manifest images absent from a store are left out, counted once (in shard 0; the
    gather sums the shards' counts) and logged.
    """
    peaks_path, proposals_path = inputs["peaks"], inputs["proposals"]
    panels_max = options["panel_images"] if panels is not None else 0
    manifest = read_manifest(manifest_path)
    status = Counter()
    with StoreReader(peaks_path, "peaks") as peaks_store, \
            StoreReader(proposals_path, "proposals") as props_store:
        for store in (peaks_store, props_store):
            if store.class_names != manifest.classes:
                raise InputError(store.path, f"class names {store.class_names} differ from the "
                                             f"manifest's {manifest.classes}")
        covered = []
        for rec in manifest.images:
            if rec.id not in peaks_store:
                status["not_in_peaks_store"] += int(shard == 0)
            elif rec.id not in props_store:
                status["not_in_proposals_store"] += int(shard == 0)
            else:
                covered.append(rec)
        records = shard_items(covered, num_shards, shard)
        # what the masks depend on (not how many pictures are drawn)
        choice = {k: v for k, v in options.items() if k != "panel_images"}
        config_digest = digest({"retrieval": choice,
                                "peaks": peaks_store.attrs.get("config_digest", ""),
                                "proposals": props_store.attrs.get("config_digest", "")})
        root = {"method": options["method"], "shard": f"{shard}/{num_shards}"}
        drawn = 0
        with StoreWriter(out_path, KIND, manifest.classes, config_digest, attrs=root) as out:
            for rec in tqdm(records, desc=f"retrieval shard {shard}", mininterval=10,
                            disable=not progress):
                peaks = peaks_store.read(rec.id)
                props = props_store.read(rec.id, ["masks", "scores"])
                for store, entry in ((peaks_store, peaks), (props_store, props)):
                    if (entry["height"], entry["width"]) != (rec.height, rec.width):
                        raise InputError(store.path, f"image {rec.id!r} is {entry['height']}x"
                                         f"{entry['width']}, the manifest says "
                                         f"{rec.height}x{rec.width}")
                arrays, attrs, detail = retrieve_image(
                    peaks, props, rec.height, rec.width, options, where=f"{peaks_path}:{rec.id}")
                out.add(rec.id, rec.height, rec.width, arrays, attrs)
                status[attrs["retrieval_status"]] += 1
                status["instances"] += len(arrays["masks"])
                status["peaks"] += attrs["num_peaks"]
                status["peaks_merged"] += attrs.get("peaks_merged", 0)
                if drawn < panels_max and detail is not None:
                    retrieval_panel(load_rgb(rec.path), peaks, arrays, *detail,
                                    manifest.classes, panels / f"{image_key(rec.id)}.png")
                    drawn += 1
            # per-shard counts as root attrs count_*: store.gather sums them over the shards
            for key, name in COUNTS.items():
                out.file.attrs[f"count_{name}"] = int(status[key])
    log.info("shard %d/%d: %d images, %s", shard, num_shards, len(records), dict(status))
    for key, path in (("not_in_peaks_store", peaks_path),
                      ("not_in_proposals_store", proposals_path)):
        if status[key]:
            log.warning("%d manifest images are not in %s and were left out", status[key],
                        path)
    return status
