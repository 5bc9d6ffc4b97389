"""Retrieval rule `consensus` (the default): among the proposals covering a candidate's point,
the one with the highest expected IoU with them, each weighted by objectness ** power (a
minimum-Bayes-risk choice: the hierarchy of proposals around an object holds its parts, the
object and the object with its surroundings; the whole object overlaps most of them, a part or
a superset few). Candidates are the peaks and, with `grid_step`, grid points where a class map
reaches `grid_threshold` of its maximum, so objects without a peak of their own get one too.
Confidence = the expected IoU x the mean class evidence (class map clamped at 0, divided by its
maximum) inside the mask; the best candidate of each (class, proposal) pair stands for it, then
greedy mask NMS by confidence. Options: `retrieval.consensus`.
"""

import numpy as np

from .select import Selection, as_float, iou_matrix


def extra_points(evidence, options, height, width):
    """Candidate points besides the peaks: every `grid_step`-th working pixel where a class's
    evidence (class map clamped at 0 / its max) reaches `grid_threshold`, for each class map.
    Returns (row of `evidence` [G], (row, col) image pixels [G, 2])."""
    step, threshold = options["consensus"]["grid_step"], options["consensus"]["grid_threshold"]
    if not step:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    h, w = evidence.shape[-2:]
    ys = np.arange(step // 2, h, step)
    xs = np.arange(step // 2, w, step)
    sampled = evidence[:, ys][:, :, xs].numpy()  # [K', gy, gx]
    k, iy, ix = np.nonzero(sampled >= threshold)
    rows = np.clip(np.round((ys[iy] + 0.5) * height / h - 0.5), 0, height - 1)
    cols = np.clip(np.round((xs[ix] + 0.5) * width / w - 0.5), 0, width - 1)
    return k.astype(np.int64), np.stack([rows, cols], 1).astype(np.int64)


def consensus_choice(iou, covers, weights):
    """For each point, the covering proposal with the highest expected IoU with the covering
    proposals, each weighted by `weights` (objectness ** power): the minimum-Bayes-risk choice.
    Returns (proposal [K] (-1: none covers), agreement [K] in [0, 1])."""
    cover = covers.astype(np.float64)  # [M, K]
    mass = weights @ cover             # [K]
    expected = iou @ (cover * weights[:, None]) / np.maximum(mass, 1e-300)  # [M, K]
    expected = np.where(covers, expected, -np.inf)
    proposal = expected.argmax(0) if len(expected) else np.zeros(covers.shape[1], np.int64)
    agreement = expected[proposal, np.arange(covers.shape[1])] if len(expected) else \
        np.full(covers.shape[1], -np.inf)
    ok = np.isfinite(agreement) & (mass > 0)
    return np.where(ok, proposal, -1), np.where(ok, agreement, 0.0)


def select(inp, options):
    """Every candidate point takes the consensus proposal among those covering it; an
    instance's confidence is that proposal's agreement times the mean class evidence inside
    it. Duplicates (the same proposal for one class) keep their best candidate; then greedy
    mask NMS by confidence."""
    o = options
    n_points = len(inp.point_class)
    covers = inp.covers & inp.valid[:, None]
    used = np.flatnonzero(covers.any(1))  # proposals covering some point: the only ones scored
    weights = np.clip(inp.objectness[used].astype(np.float64), 0, None) ** o["consensus"]["power"]
    iou = iou_matrix(inp.masks[used])
    pick, agreement = consensus_choice(iou, covers[used], weights)
    proposal = np.full(n_points, -1)
    proposal[pick >= 0] = used[pick[pick >= 0]]  # `used` may be empty: no proposal covers
    # mean evidence of the candidate's class inside its chosen proposal
    flat = as_float(inp.masks[used].flatten(1))
    mean_evidence = ((flat @ inp.class_evidence.flatten(1).T)
                     / flat.sum(1, keepdim=True).clamp(min=1)).double().numpy()  # [U, K']
    confidence = np.zeros(n_points)
    has = pick >= 0
    confidence[has] = agreement[has] * mean_evidence[pick[has], inp.point_map[has]]

    # best candidate per (class, proposal), then NMS by confidence
    cand = np.flatnonzero(has)
    cand = cand[np.lexsort((cand, -confidence[cand]))]
    owner = {}
    merged_into = np.full(n_points, -1)
    firsts = []
    for k in cand:
        key = (int(inp.point_class[k]), int(proposal[k]))
        if key in owner:
            merged_into[k] = owner[key]
        else:
            owner[key] = k
            firsts.append(k)
    firsts = np.asarray(firsts, np.int64)
    chosen = pick[firsts]
    pair = iou[np.ix_(chosen, chosen)] if len(firsts) else np.zeros((0, 0))
    if not o["nms_class_agnostic"]:
        pair = np.where(inp.point_class[firsts][:, None] == inp.point_class[firsts][None], pair, 0)
    kept = []
    for i, k in enumerate(firsts):
        dup = [j for j in kept if o["nms_iou"] is not None and pair[i, j] >= o["nms_iou"]]
        if dup:
            merged_into[k] = firsts[dup[0]]
        elif confidence[k] >= o["min_score"]:
            kept.append(i)
    kept_points = firsts[kept] if kept else np.zeros(0, np.int64)
    return Selection(proposal, agreement, kept_points, merged_into, confidence[kept_points])
