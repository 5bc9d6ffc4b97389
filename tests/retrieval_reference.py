"""The straightforward retrieval: the correctness reference for the vectorised rules prm and
wise (tag2mask.retrieval.select.select). Used by tests/test_retrieval.py and
benchmarks/retrieval_vectorised.py (which puts tests/ on sys.path); not part of the package."""

import numpy as np
from scipy import ndimage

from tag2mask.retrieval.prm import background as prm_background
from tag2mask.retrieval.prm import footprint as prm_footprint
from tag2mask.retrieval.select import Selection


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def select_reference_loop(inp, options):
    """`select` the straightforward way: a Python loop over peaks and proposals, 2-D masks one
    at a time. It recomputes each contour with scipy.ndimage and each IoU with logical ops,
    independently of the max-pool and matrix products of `select`.
    """
    o = options
    masks = inp.masks.numpy()
    response = inp.response.numpy().astype(np.float64)
    if o["method"] == "prm":
        background = prm_background(inp, o).numpy()
        size = prm_footprint(inp, o)
        footprint = np.ones((size, size), bool)
    n_peaks = len(inp.peak_class)
    proposal = np.full(n_peaks, -1)
    score = np.full(n_peaks, -np.inf)
    for p in range(n_peaks):
        if not inp.has_response[p]:
            continue
        for m in range(len(masks)):
            if not inp.valid[m]:
                continue
            if o["method"] == "prm":
                s = masks[m]
                u8 = s.astype(np.uint8)
                contour = (ndimage.grey_dilation(u8, footprint=footprint)
                           > ndimage.grey_erosion(u8, footprint=footprint))
                a, b = o["prm"]["a"], o["prm"]["b"]
                value = (a * response[p][s].sum() + response[p][contour].sum()
                         - b * inp.pixel_area * np.count_nonzero(background[p] & s))
            else:
                if not inp.covers[m, p]:
                    continue
                value = float(inp.objectness[m])
            if value > score[p]:
                proposal[p], score[p] = m, value

    cand = sorted((p for p in range(n_peaks) if proposal[p] >= 0),
                  key=lambda p: (-score[p], -inp.peak_value[p], p))
    kept, merged_into, merged = [], np.full(n_peaks, -1), {}
    for p in cand:
        mp = masks[proposal[p]]
        for k in kept:
            if o["nms_iou"] is None:
                break
            if not o["nms_class_agnostic"] and inp.peak_class[k] != inp.peak_class[p]:
                continue
            mk = masks[proposal[k]]
            union = np.logical_or(mk, mp).sum()
            iou = np.logical_and(mk, mp).sum() / union if union else 0.0
            if proposal[k] == proposal[p] or iou >= o["nms_iou"]:
                merged_into[p] = k
                merged[k] = merged[k] + response[p] * mp
                break
        else:
            kept.append(p)
            merged[p] = response[p].copy()
    conf = []
    for k in kept:
        mk = masks[proposal[k]]
        total = merged[k].sum()
        conf.append(_sigmoid(inp.peak_value[k]) * (merged[k][mk].sum() / max(total, 1e-12)))
    conf = np.array(conf, np.float64)
    keep = conf >= o["min_score"]
    kept, conf = np.array(kept, np.int64)[keep], conf[keep]
    order = np.argsort(-conf, kind="stable")
    return Selection(proposal, score, kept[order], merged_into, conf[order])
