"""Proposal retrieval: one mask proposal per class peak, vectorised over peaks and proposals.

Three rules pick a proposal for each peak of an image:

* ``consensus`` (the default): among the proposals covering the candidate's point, the one
  with the highest expected IoU with them, each weighted by objectness ** consensus_power (a
  minimum-Bayes-risk choice: the hierarchy of proposals around an object holds its parts,
  the object and the object with its surroundings; the whole object overlaps most of them,
  a part or a superset few). Candidates are the peaks and, with ``grid_step``, grid points
  where a class map reaches ``grid_threshold`` of its maximum, so objects without a peak of
  their own get one too. Confidence = the expected IoU x the mean class evidence (class map
  clamped at 0, divided by its maximum) inside the mask; the best candidate of each (class,
  proposal) pair stands for it, then greedy mask NMS by confidence (``select_consensus``).

* ``prm`` (Zhou et al. 2018): every candidate proposal S gets, for every peak,

      score(S) = a * sum(R over S) + sum(R over contour(S)) - b * sum(Q over S)

  with R the peak's response map, Q the background of the peak's class map
  (map < background_factor x its mean) and contour(S) the morphological gradient of S
  (dilation minus erosion with a square footprint). The best proposal per peak is kept.
* ``wise`` (Laradji et al. 2019): among the proposals that cover the peak's point (the argmax
  of its response map, or the peak itself), the one with the highest objectness score.

PRM and WISE then sort the retrieved instances by their retrieval score (PRM score, or
objectness for WISE) and run a greedy mask NMS (IoU >= nms_iou suppresses). As in PRM's code,
the response map of a suppressed duplicate (inside its own mask) is added into the kept
instance's response map; the merged map feeds the confidence below.

Work happens at a reduced *working resolution* (longest side ``working_size``): proposals are
area-downsampled and thresholded at 0.5 into a bool stack [M, h, w]; response and class maps are
bilinearly resized to [P, h, w]. Scores for all peaks and proposals are then two matrix
products ([P, h*w] @ [h*w, M]: the inside terms a*R - b*Q against the masks, R against the
contours); contours come from a separable bool dilation/erosion of the stack (both done per
chunk of 32 proposals, so the float copies stay in cache); the NMS IoU matrix is one product
of the chosen masks. Only the greedy NMS loops, over kept instances. Resolution-independence of
the score: R is renormalised to sum 1 at the working resolution (as at map resolution), the
contour footprint ``contour_width`` is given in image pixels and scaled (odd, at least 3), and
sum(Q over S) is counted in image pixels (working pixels x image pixels per working pixel), so b
keeps the meaning it has in PRM's code, which scores at image resolution. The final pseudo masks
are the chosen proposals' full-resolution RLE, copied unchanged from the proposals store.

Per-instance confidence (the ``scores`` of the pseudo-mask store, what the evaluator ranks by):

    confidence = sigmoid(peak_value) * (mass of the merged response map inside the mask)

sigmoid(peak_value) is the classifier's own evidence for the class at that peak (the class maps
are logits: the class score, a mean of peak values, goes through a sigmoid in the multi-label
soft-margin loss), so weak and spurious peaks rank low. The response mass inside the mask
(0..1, the merged map normalised to sum 1) says how much of the evidence behind the peak the mask
explains: a mask that misses the object the peak responds to ranks low. Both factors are bounded
and comparable across images and across the two rules, unlike the raw PRM score (which grows with
mask size and has no fixed scale) or the proposal generator's objectness (whose scale depends on
the generator). PRM released no per-instance confidence.
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core import masks as mask_rle
from ..core.errors import InputError

log = logging.getLogger(__name__)


def working_shape(height, width, working_size):
    """(h, w) of the working resolution: longest side `working_size`, never upsampled."""
    scale = min(1.0, working_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def contour_size(contour_width, height, work_height):
    """Odd footprint side at the working resolution for a `contour_width` in image pixels."""
    k = contour_width * work_height / height
    return max(3, 2 * int(round((k - 1) / 2)) + 1)


def block_edges(size, work_size):
    """Start index of each working pixel's block of image pixels along one axis (a partition)."""
    return np.floor(np.arange(work_size) * size / work_size).astype(np.int64)


def proposal_stack(counts, height, width, shape, points=None, chunk=64):
    """Decode RLE proposals and area-downsample them to `shape`.

    Working pixel (i, j) covers the image pixels [y_i, y_i+1) x [x_j, x_j+1) with
    y_i = floor(i * H / h) (a partition of the image); it is set when at least half of them are.
    Returns (bool tensor [M, h, w], bool array [M, len(points)]): the second says whether each
    proposal covers each (row, col) point at full resolution. Decoded in chunks so memory stays
    bounded for many proposals on large images.
    """
    h, w = shape
    n = len(counts)
    points = np.zeros((0, 2), np.int64) if points is None else np.asarray(points, np.int64)
    work = np.zeros((n, h, w), bool)
    covers = np.zeros((n, len(points)), bool)
    ey, ex = block_edges(height, h), block_edges(width, w)
    block = np.diff(np.r_[ey, height])[:, None] * np.diff(np.r_[ex, width])[None, :]
    for start in range(0, n, chunk):
        full = mask_rle.decode(counts[start:start + chunk], height, width)
        stop = start + len(full)
        if len(points):
            covers[start:stop] = full[:, points[:, 0], points[:, 1]]
        if (h, w) == (height, width):
            work[start:stop] = full
        else:  # block sums by two reductions (no float copy of the full-resolution stack)
            sums = np.add.reduceat(full, ey, axis=1, dtype=np.uint32)
            sums = np.add.reduceat(sums, ex, axis=2, dtype=np.uint32)
            work[start:stop] = 2 * sums >= block
    return torch.from_numpy(work), covers


def resize_maps(maps, shape):
    """Bilinearly resize float maps [N, h0, w0] to [N, h, w] (float32 tensor)."""
    t = torch.as_tensor(np.asarray(maps, np.float32))
    if len(t) == 0 or tuple(t.shape[1:]) == tuple(shape):
        return t.reshape(len(t), *shape) if len(t) == 0 else t.clone()
    return F.interpolate(t[:, None], size=tuple(shape), mode="bilinear", align_corners=False)[:, 0]


def _square_filter(stack, radius, combine):
    """OR (dilation) or AND (erosion) of a bool stack over a (2r+1)^2 square, separably by
    shifted copies; pixels outside the image take no part."""
    out = stack
    for axis in (1, 2):
        src, out = out, out.clone()
        n = src.shape[axis]
        for d in range(1, min(radius, n - 1) + 1):
            lo, hi = out.narrow(axis, d, n - d), out.narrow(axis, 0, n - d)
            combine(lo, src.narrow(axis, 0, n - d), out=lo)
            combine(hi, src.narrow(axis, d, n - d), out=hi)
    return out


def morphological_gradient(stack, size):
    """Dilation minus erosion of a bool stack [M, h, w] with a size x size square footprint.

    Pixels outside the image are ignored (neither dilate nor erode), as in OpenCV/scipy.
    Separable shifts of bool tensors: about 50x faster than a float max-pool of the stack.
    """
    r = size // 2
    return _square_filter(stack, r, torch.logical_or) & ~_square_filter(stack, r,
                                                                       torch.logical_and)


def map_point(flat_index, map_shape, height, width):
    """Map-pixel centre (flat index into a [h0, w0] map) -> (row, col) image pixel."""
    r, c = np.unravel_index(flat_index, map_shape)
    y = (r + 0.5) * height / map_shape[0] - 0.5
    x = (c + 0.5) * width / map_shape[1] - 0.5
    return np.stack([np.clip(np.round(y), 0, height - 1),
                     np.clip(np.round(x), 0, width - 1)], axis=-1).astype(np.int64)


def grid_points(evidence, step, threshold, height, width):
    """Candidate points of method consensus besides the peaks: every `step`-th working pixel
    where a class's evidence (class map clamped at 0 / its max) reaches `threshold`, for each
    class map. Returns (row of `evidence` [G], (row, col) image pixels [G, 2])."""
    h, w = evidence.shape[-2:]
    ys = np.arange(step // 2, h, step)
    xs = np.arange(step // 2, w, step)
    sampled = evidence[:, ys][:, :, xs].numpy()  # [K', gy, gx]
    k, iy, ix = np.nonzero(sampled >= threshold)
    rows = np.clip(np.round((ys[iy] + 0.5) * height / h - 0.5), 0, height - 1)
    cols = np.clip(np.round((xs[ix] + 0.5) * width / w - 0.5), 0, width - 1)
    return k.astype(np.int64), np.stack([rows, cols], 1).astype(np.int64)


@dataclass
class WorkingInputs:
    """Everything one image's retrieval needs, at the working resolution."""
    masks: torch.Tensor          # bool [M, h, w] candidate proposals
    valid: np.ndarray            # bool [M]: within the area limits (and non-empty when working)
    objectness: np.ndarray       # float32 [M]
    covers: np.ndarray           # bool [M, K]: proposal covers candidate k's point
    response: torch.Tensor       # float32 [P, h, w], each sums to 1 (or 0 if no response)
    background: torch.Tensor     # bool [P, h, w]: Q of the peak's class map
    peak_class: np.ndarray       # int [P]
    peak_value: np.ndarray       # float32 [P]
    has_response: np.ndarray     # bool [P]
    pixel_area: float            # image pixels per working pixel
    contour_size: int            # footprint side of the contours at the working resolution
    # Candidates k < P are the peaks; method consensus adds grid points on the class maps.
    point_class: np.ndarray      # int [K]
    point_yx: np.ndarray         # float [K, 2] image pixels
    class_evidence: torch.Tensor  # float32 [K', h, w]: class map clamped at 0 / its max
    point_map: np.ndarray        # int [K]: row of class_evidence of the candidate's class


def prepare_image(peaks, proposal_counts, objectness, height, width, options, where="image"):
    """Build WorkingInputs from one image's peaks-store entry and its proposals.

    `peaks` is the dict StoreReader.read gives (peak_class, peak_yx, peak_value, response_maps,
    map_classes, class_maps, optionally response_argmax_yx); `proposal_counts` are the RLE masks
    of the proposals store, best first; only the first `top_proposals` are candidates.
    """
    o = options
    top = o["top_proposals"]
    counts = list(proposal_counts[:top] if top else proposal_counts)
    objectness = np.asarray(objectness, np.float32)[:len(counts)]
    peak_class = np.asarray(peaks["peak_class"], np.int64)
    n_peaks = len(peak_class)
    shape = working_shape(height, width, o["working_size"])

    response_maps = np.asarray(peaks["response_maps"], np.float32)
    if response_maps.shape[0] != n_peaks:
        raise InputError(where, f"{response_maps.shape[0]} response maps for {n_peaks} peaks")
    map_shape = response_maps.shape[1:]

    # The point WISE looks up: the argmax of the response map (WISE), or the peak itself.
    if o["point"] == "argmax" and "response_argmax_yx" in peaks:
        points = np.asarray(peaks["response_argmax_yx"], np.float64).reshape(-1, 2)
    elif o["point"] == "argmax":
        points = map_point(response_maps.reshape(n_peaks, -1).argmax(1), map_shape, height, width)
    else:
        points = np.asarray(peaks["peak_yx"], np.float64).reshape(-1, 2)
    points = np.stack([np.clip(np.round(points[:, 0]), 0, height - 1),
                       np.clip(np.round(points[:, 1]), 0, width - 1)], axis=-1).astype(np.int64)

    map_classes = [int(c) for c in np.asarray(peaks["map_classes"]).ravel()]
    missing = sorted(set(peak_class.tolist()) - set(map_classes))
    if missing:
        raise InputError(where, f"peaks of classes {missing} have no stored class map")
    class_maps = resize_maps(peaks["class_maps"], shape)
    evidence = class_maps.clamp(min=0)
    evidence /= evidence.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    point_class = peak_class
    point_map = np.asarray([map_classes.index(int(c)) for c in peak_class], np.int64)
    if o["method"] == "consensus" and o["grid_step"]:
        grid_map, grid_yx = grid_points(evidence, o["grid_step"], o["grid_threshold"],
                                        height, width)
        points = np.concatenate([points, grid_yx])
        point_class = np.concatenate([peak_class, np.asarray(map_classes, np.int64)[grid_map]])
        point_map = np.concatenate([point_map, grid_map])
    work, covers = proposal_stack(counts, height, width, shape, points)
    area = mask_rle.area(counts, height, width) / float(height * width)
    valid = (area >= o["min_area"]) & (area < o["max_area"])
    if o["method"] == "prm":  # a proposal that vanishes at the working size cannot be scored
        valid &= work.flatten(1).any(1).numpy()
    size = contour_size(o["contour_width"], height, shape[0])

    response = resize_maps(response_maps, shape).clamp_(min=0)
    total = response.flatten(1).sum(1)
    has_response = (total > 0).numpy()
    response /= torch.where(total > 0, total, torch.ones_like(total))[:, None, None]

    q = class_maps < o["background_factor"] * class_maps.flatten(1).mean(1)[:, None, None]
    background = q[[map_classes.index(int(c)) for c in peak_class]] if n_peaks else \
        torch.zeros((0, *shape), dtype=torch.bool)

    return WorkingInputs(
        masks=work, valid=valid,
        objectness=objectness, covers=covers, response=response, background=background,
        peak_class=peak_class, peak_value=np.asarray(peaks["peak_value"], np.float32),
        has_response=has_response, pixel_area=height * width / float(shape[0] * shape[1]),
        contour_size=size, point_class=point_class, point_yx=points.astype(np.float32),
        class_evidence=evidence, point_map=point_map)


@dataclass
class Selection:
    """What retrieval decided for one image. Candidates k < P are the peaks, indexed as in the
    peaks store (methods prm and wise have no others)."""
    proposal: np.ndarray      # int [K]: chosen proposal per candidate (-1: none)
    score: np.ndarray         # float [K]: retrieval score of that choice (PRM score, objectness
    #                           or consensus agreement)
    kept: np.ndarray          # int [N]: candidates whose instance survived NMS, best first
    merged_into: np.ndarray   # int [K]: kept candidate a suppressed one was merged into (-1)
    confidence: np.ndarray    # float [N]: per-instance confidence of `kept`


def _as_float(mask):
    """bool tensor -> float32 (via uint8: torch's direct bool->float cast is ~20x slower)."""
    return mask.view(torch.uint8).to(torch.float32)


def prm_scores(inp, a, b, chunk=32):
    """PRM scores [P, M] of every proposal for every peak: per chunk of proposals, the contours
    (one separable bool filter) and two matrix products; chunks keep the float copies in cache."""
    r = inp.response.flatten(1)
    inside = a * r - (b * inp.pixel_area) * _as_float(inp.background.flatten(1))
    scores = torch.empty((len(r), len(inp.masks)))
    for start in range(0, len(inp.masks), chunk):
        masks = inp.masks[start:start + chunk]
        contours = morphological_gradient(masks, inp.contour_size)
        scores[:, start:start + len(masks)] = (inside @ _as_float(masks.flatten(1)).T
                                               + r @ _as_float(contours.flatten(1)).T)
    return scores.double().numpy()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def iou_matrix(masks):
    """IoU [M, M] of bool masks [M, h, w] (float64 numpy), by one matrix product."""
    flat = _as_float(masks.flatten(1))
    inter = (flat @ flat.T).double().numpy()
    area = np.diag(inter)
    return inter / np.maximum(area[:, None] + area[None] - inter, 1e-10)


def consensus_choice(iou, covers, weights):
    """For each point, the covering proposal with the highest expected IoU with the covering
    proposals, each weighted by `weights` (objectness ** power): the minimum-Bayes-risk choice.
    Parts and supersets of an object overlap few of its other proposals; the whole object
    overlaps most of them. Returns (proposal [K] (-1: none covers), agreement [K] in [0, 1])."""
    cover = covers.astype(np.float64)  # [M, K]
    mass = weights @ cover             # [K]
    expected = iou @ (cover * weights[:, None]) / np.maximum(mass, 1e-300)  # [M, K]
    expected = np.where(covers, expected, -np.inf)
    proposal = expected.argmax(0) if len(expected) else np.zeros(covers.shape[1], np.int64)
    agreement = expected[proposal, np.arange(covers.shape[1])] if len(expected) else \
        np.full(covers.shape[1], -np.inf)
    ok = np.isfinite(agreement) & (mass > 0)
    return np.where(ok, proposal, -1), np.where(ok, agreement, 0.0)


def select_consensus(inp, options):
    """Method consensus: every candidate point (peaks, and grid points on the class maps)
    takes the consensus proposal among those covering it; an instance's confidence is that
    proposal's agreement times the mean class evidence inside it. Duplicates (the same
    proposal for one class) keep their best candidate; then greedy mask NMS by confidence."""
    o = options
    n_points = len(inp.point_class)
    covers = inp.covers & inp.valid[:, None]
    used = np.flatnonzero(covers.any(1))  # proposals covering some point: the only ones scored
    weights = np.clip(inp.objectness[used].astype(np.float64), 0, None) ** o["consensus_power"]
    iou = iou_matrix(inp.masks[used])
    pick, agreement = consensus_choice(iou, covers[used], weights)
    proposal = np.full(n_points, -1)
    proposal[pick >= 0] = used[pick[pick >= 0]]  # `used` may be empty: no proposal covers
    # mean evidence of the candidate's class inside its chosen proposal
    flat = _as_float(inp.masks[used].flatten(1))
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


def select(inp, options):
    """The vectorised retrieval: choose, NMS, merge response maps, confidence."""
    o = options
    if o["method"] == "consensus":
        return select_consensus(inp, o)
    n_peaks, n_props = len(inp.peak_class), len(inp.valid)
    usable = inp.has_response
    if o["method"] == "prm":
        table = prm_scores(inp, o["a"], o["b"])
        allowed = np.broadcast_to(inp.valid[None], table.shape)
    else:
        table = np.broadcast_to(inp.objectness[None].astype(np.float64), (n_peaks, n_props))
        allowed = inp.covers.T & inp.valid[None]
    table = np.where(allowed & usable[:, None], table, -np.inf)
    if n_props:
        proposal = table.argmax(1)
        score = table[np.arange(n_peaks), proposal]
    else:
        proposal, score = np.zeros(n_peaks, np.int64), np.full(n_peaks, -np.inf)
    proposal = np.where(np.isfinite(score), proposal, -1)

    cand = np.flatnonzero(proposal >= 0)
    # Sort by retrieval score (PRM's order); ties by peak value, then peak index.
    cand = cand[np.lexsort((cand, -inp.peak_value[cand], -score[cand]))]
    chosen = _as_float(inp.masks[proposal[cand]].flatten(1))
    inter = (chosen @ chosen.T).double().numpy()
    area = np.diag(inter)
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1e-10)
    iou[proposal[cand][:, None] == proposal[cand][None]] = 1.0  # same proposal: a duplicate
    if not o["nms_class_agnostic"]:
        iou[inp.peak_class[cand][:, None] != inp.peak_class[cand][None]] = 0.0

    nms = o["nms_iou"]
    owner = np.arange(len(cand))  # position of the kept instance each candidate belongs to
    done = np.zeros(len(cand), bool)
    for i in range(len(cand)):  # greedy NMS: a loop over kept instances, vectorised inside
        if done[i]:
            continue
        done[i] = True
        if nms is not None:
            dup = ~done & (iou[i] >= nms)
            owner[dup] = i
            done |= dup
    keep_pos = np.flatnonzero(owner == np.arange(len(cand)))

    # Merged response maps: kept map + each suppressed duplicate's map inside its own mask.
    r = inp.response[cand].flatten(1)
    assign = torch.zeros((len(keep_pos), len(cand)))
    assign[np.searchsorted(keep_pos, owner), np.arange(len(cand))] = 1.0
    assign[np.arange(len(keep_pos)), keep_pos] = 0.0
    merged = r[keep_pos] + assign @ (r * chosen)
    inside = (merged * chosen[keep_pos]).sum(1) / merged.sum(1).clamp(min=1e-12)
    kept = cand[keep_pos]
    confidence = _sigmoid(inp.peak_value[kept]) * inside.double().numpy()

    merged_into = np.full(n_peaks, -1)
    merged_into[cand] = np.where(owner != np.arange(len(cand)), cand[owner], -1)
    keep = confidence >= o["min_score"]
    order = np.argsort(-confidence[keep], kind="stable")
    return Selection(proposal, score, kept[keep][order], merged_into, confidence[keep][order])
